"""Models from the Hugging Face hub: fetched once, before compute, then loaded with the hub offline.

Compute nodes of a cluster usually have no internet. The workflow's ``fetch_model`` rule (a local
rule: it runs where Snakemake runs, e.g. the login node) downloads each hub backbone a target needs,
at its pinned ``revision``, into the cache named by ``hub.hf_home`` in the config (``HF_HOME``; put it
on storage the compute nodes see). Every other job loads with ``HF_HUB_OFFLINE=1``.

Locally built (``build:``), packaged (``package:``) and local-folder models need no fetch. open_clip
models named ``hf-hub:org/repo`` are hub repos; other open_clip names with a ``pretrained`` tag are
fetched by instantiating them once (open_clip downloads into the same cache).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from sailflow.backbones.spec import BackboneError

# Files a model needs (weights as safetensors only: nothing is ever unpickled).
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.jinja", "*.tiktoken", "*.bpe", "*.md"]


class ModelNotCached(BackboneError):
    """A hub model is not in the cache and cannot be fetched; the message says how to fetch it."""


def hub_repo(spec: dict) -> str | None:
    """The hub repository a backbone loads from, or None when it needs no download."""
    if "build" in spec:
        return None
    path = spec["path"]
    if path.startswith(("package:", "local-dir:")):
        return None
    if path.startswith("hf-hub:"):
        return path.removeprefix("hf-hub:")
    if spec.get("family") == "open_clip" or Path(path).exists():
        return None  # an open_clip built-in name (see needs_fetch) or a local folder
    return path


def needs_fetch(spec: dict) -> bool:
    """True for backbones the ``fetch_model`` rule must download before any job loads them."""
    if hub_repo(spec) is not None:
        return True
    return spec.get("family") == "open_clip" and bool(spec.get("pretrained")) and not Path(spec["pretrained"]).exists() \
        and not spec["path"].startswith(("package:", "local-dir:")) and "build" not in spec


def use_model_cache(hf_home: str | None, offline: bool) -> None:
    """Point this process and the jobs it starts at the model cache ``hf_home`` (None: keep the
    environment's HF_HOME), with the hub offline or not. Call before huggingface_hub is imported."""
    if hf_home:
        os.environ["HF_HOME"] = str(Path(hf_home).expanduser().resolve())
    os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def fetch_command(name: str) -> str:
    return f"snakemake --cores 1 resources/models/{name}.json"


def not_cached_message(name: str, spec: dict, reason: str = "") -> str:
    what = hub_repo(spec) or f"{spec['path']} (pretrained {spec.get('pretrained')!r})"
    rev = spec.get("revision") or "main"
    why = f" ({reason})" if reason else ""
    return (f"backbones.{name}: model {what!r} at revision {rev!r} is not in the model cache {cache_dir()} and cannot be "
            f"fetched{why}. Fetch it on a machine with internet access (e.g. the login node), with the same "
            f"hub.hf_home in config/config.yaml: `{fetch_command(name)}` (or `snakemake --cores 1 --until fetch_model <target>` "
            "for every model a target needs).")


def fetch(name: str, spec: dict, log=sys.stderr) -> dict:
    """Download backbone ``name`` into the hub cache (or find it there when the hub is unreachable).

    Returns what the ``fetch_model`` rule records: repository, requested and resolved revision, the
    local snapshot folder. Raises :class:`ModelNotCached` when it is neither downloadable nor cached."""
    repo, rev = hub_repo(spec), spec.get("revision")
    if repo is None:  # an open_clip built-in name with a pretrained tag: instantiating it downloads it
        import open_clip

        try:
            open_clip.create_model(spec["path"], pretrained=spec["pretrained"])
        except Exception as e:  # noqa: BLE001 - whatever open_clip raises, the user needs the same advice
            raise ModelNotCached(not_cached_message(name, spec, f"{type(e).__name__}: {e}")) from None
        return {"backbone": name, "open_clip": spec["path"], "pretrained": spec["pretrained"], "cache": cache_dir()}
    from huggingface_hub import snapshot_download

    try:  # huggingface_hub itself falls back to a cached snapshot when the hub is unreachable
        path = snapshot_download(repo, revision=rev, allow_patterns=MODEL_FILES)
    except Exception as e:  # noqa: BLE001 - offline and not cached, unknown repo or revision, no access
        raise ModelNotCached(not_cached_message(name, spec, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")) from None
    print(f"[fetch] {name}: {repo} at {rev or 'main'} -> {path}", file=log)
    return {"backbone": name, "repo": repo, "revision": rev, "commit": Path(path).name, "snapshot": path, "cache": cache_dir()}


@contextlib.contextmanager
def loading(name: str, spec: dict):
    """Turn a hub model missing from the offline cache into one clear error (instead of the loader's
    traceback about connections and offline mode)."""
    try:
        yield
    except OSError as e:
        if needs_fetch(spec):
            raise ModelNotCached(not_cached_message(name, spec, str(e).splitlines()[0][:300])) from None
        raise
