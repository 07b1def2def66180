"""Evaluation task kinds: one module each in this package, found here by name.

A kind module defines ``KIND = TaskKind(...)``: the config keys of an ``eval_tasks:`` entry of that
kind, the files it reads (its jobs' inputs), how to load the set, which images and texts a model
must encode, how to score, the tie rule, and what the model must be able to do. Adding a kind
(VQA, say) is adding one module here; nothing else changes. Kind modules import torch inside their
functions, so the workflow plans (and checks the config) without it.

The interface a scored model provides, by capability (``TaskKind.needs``):
    encode_image(list of image paths) -> [N, D] L2-normalised     (sailflow.model.AlignedModel, ...)
    encode_text(list of str) -> [N, D] L2-normalised
    generate(list of image paths, list of prompts, max_new_tokens) -> list of str   (LLaVA runs)
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable


class TaskError(ValueError):
    """An ``eval_tasks:`` entry is unusable; the message names the task and the key."""


@dataclass(frozen=True)
class TaskKind:
    name: str
    keys: dict[str, str]  # config keys besides `kind`, with what each means (the config's documentation)
    required: tuple  # keys that must be given; a tuple inside means "one of these"
    files: Callable[[dict], list[str]]  # files/folders the task reads (torch-free: used when planning)
    load: Callable[[dict, str], Any]  # (spec, task name) -> the set (paths and strings, no pixels)
    images: Callable[[Any], list]  # every image a model must encode, each once, in order
    texts: Callable[[dict, Any, str], list[str]]  # every text a model must encode, each once, in order
    score: Callable[..., dict]  # (model, spec, data, name, settings) -> {"metrics", "counts", "chance", ...}
    tie_rule: str
    result_task: str  # the "task" field of result files (CLIP_benchmark's name where its metrics are ours)
    text_only_keys: tuple = ()  # keys that change only the texts: a new value re-encodes texts, not images
    settings: tuple = ()  # keys of the config's `eval:` section that scoring reads
    needs: tuple = ("encode_image", "encode_text")
    defaults: dict = field(default_factory=dict)


def _discover() -> dict[str, TaskKind]:
    kinds = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, TaskKind):
            kinds[kind.name] = kind
    return dict(sorted(kinds.items()))


KINDS = _discover()


def kind_of(spec: dict, name: str = "task") -> TaskKind:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise TaskError(f"eval_tasks.{name}.kind must be one of {list(KINDS)}, not {kind!r}")
    return KINDS[kind]


def check_task(spec: dict, name: str = "task") -> TaskKind:
    """Refuse an entry with an unknown kind, an unknown key (a typo would be ignored) or a missing one."""
    kind = kind_of(spec, name)
    unknown = sorted(set(spec) - set(kind.keys) - {"kind"})
    if unknown:
        raise TaskError(f"eval_tasks.{name}: unknown key(s) {unknown} for a {kind.name} task (its keys: {sorted(kind.keys)})")
    for req in kind.required:
        options = req if isinstance(req, tuple) else (req,)
        given = [k for k in options if k in spec]
        if not given:
            raise TaskError(f"eval_tasks.{name}: a {kind.name} task needs {' or '.join(f'`{k}`' for k in options)}")
        if len(given) > 1:
            raise TaskError(f"eval_tasks.{name}: give only one of {given}")
    return kind


def with_defaults(spec: dict, name: str = "task") -> dict:
    return {**kind_of(spec, name).defaults, **spec}
