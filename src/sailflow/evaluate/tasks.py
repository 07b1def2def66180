"""Evaluation tasks as configured under ``eval_tasks:``: load the set from disk, score a model.

An entry has a ``kind`` (a module of :mod:`sailflow.evaluate.kinds`: zeroshot, retrieval, winoground,
mmvp, ...) and that kind's keys (the paths of its data, prompts, ...). This module dispatches to the
kind; it knows none of them.

    from sailflow.evaluate import tasks
    tasks.run(model, {"kind": "retrieval", "format": "coco", "annotations": "coco_test_karpathy.json", "images": "val2014"})
"""

from __future__ import annotations

from sailflow.evaluate.kinds import KINDS, TaskError, check_task, kind_of, with_defaults  # noqa: F401 - the registry's API


def load(spec: dict, name: str = "task"):
    """The task's data (paths and strings, no pixels yet)."""
    return kind_of(spec, name).load(with_defaults(spec, name), name)


def images_of(spec: dict, data, name: str = "task") -> list:
    """Every image the task will ask a model to encode, each once, in order."""
    return kind_of(spec, name).images(data)


def texts_of(spec: dict, data, name: str = "task") -> list[str]:
    """Every text (prompt, caption, statement) the task will ask a model to encode, each once, in order."""
    return kind_of(spec, name).texts(with_defaults(spec, name), data, name)


def files_of(spec: dict, name: str = "task") -> list[str]:
    """The files and folders the task reads (its jobs' inputs); torch-free."""
    return kind_of(spec, name).files(with_defaults(spec, name))


def run(model, spec: dict, data=None, name: str = "task", settings: dict | None = None) -> dict:
    """Score ``model`` on the task: ``{"metrics", "counts", "chance"}`` (+ what the kind adds, e.g.
    ``examples``). ``settings``: the config's ``eval:`` values the kind reads (defaults otherwise)."""
    kind = check_task(spec, name)
    missing = [cap for cap in kind.needs if not callable(getattr(model, cap, None))]
    if missing:
        raise TaskError(f"eval_tasks.{name}: a {kind.name} task needs a model with {missing}; {type(model).__name__} has none")
    spec = with_defaults(spec, name)
    data = kind.load(spec, name) if data is None else data
    return kind.score(model, spec, data, name, settings or {})
