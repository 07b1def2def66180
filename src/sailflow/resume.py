"""When a trainer may resume: only an unfinished run, on the very same inputs and settings.

Every resumable trainer (alignment, the LLaVA stages, CLIP from scratch) keeps its training state in
a folder of its own (``state/``) and uses this module around it:

    identity = run_identity(settings, {"image": paths, "text": paths}, world=world)
    resumable = prepare_state(state_dir, identity, log)   # wipes a state of other inputs or settings
    ... train, writing checkpoints into state_dir ...
    ... write the final outputs ...
    finish_state(state_dir)                                # a finished run is never resumed

The identity pins what the state was trained on: the settings that decide the result, and each input
file's identity: its path, size and modification time, and for a safetensors file its header (for our
embedding chunks: backbone fingerprint, pooling, shape, dtype and the hash of the sample keys). A
rewritten input therefore never resumes a state, even when it has the same shape: re-encoding with a
new ``max_length`` gives new embeddings of the same width, and a state trained on the old ones must
not continue on them. Reading headers and ``stat`` keeps this cheap for terabytes of embeddings.

``identity.json`` is written before the first checkpoint and removed last by :func:`finish_state`,
so a state folder without one (or with another) is never trusted.

:func:`save_checkpoint` / :func:`load_checkpoint` keep a whole training state in one safetensors file:
a module's state dict, its optimizer's per-parameter tensors (by parameter name), the torch RNG and
the step, plus whatever the trainer adds; nothing is pickled. (Trainers built on transformers'
Trainer keep its checkpoint folders inside the state folder instead.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

from sailflow.config import digest

IDENTITY = "identity.json"


def _safetensors_header(path: Path) -> str | None:
    """sha256 of a safetensors file's JSON header (tensor names, shapes, dtypes, metadata)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            return None
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:  # not a safetensors header
            return None
        return hashlib.sha256(f.read(n)).hexdigest()


def file_identity(path: str | os.PathLike) -> dict:
    """What a resumed state must find unchanged about one input file."""
    p = Path(path)
    st = p.stat()
    ident = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.suffix == ".safetensors":
        ident["header_sha256"] = _safetensors_header(p)
    return ident


def run_identity(settings: dict, inputs: dict[str, list[str | os.PathLike]], **extra) -> dict:
    """The identity of a training run: a digest of ``settings`` (only what decides the result, not
    logging or checkpoint intervals), one digest per input label (``{label: [files]}``) and ``extra``
    values (e.g. ``world``: the process count)."""
    return {
        "settings": digest(settings),
        "inputs": {label: digest([file_identity(p) for p in paths]) for label, paths in inputs.items()},
        **extra,
    }


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("settings") != new.get("settings"):
        out.append("settings changed")
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    for label in sorted(set(old_in) | set(new_in)):
        if old_in.get(label) != new_in.get(label):
            out.append(f"{label} inputs changed (rewritten or different files)")
    for key in sorted((set(old) | set(new)) - {"settings", "inputs"}):
        if old.get(key) != new.get(key):
            out.append(f"{key} changed: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def prepare_state(state_dir: str | os.PathLike, identity: dict, log=sys.stderr, name: str = "train") -> bool:
    """Make ``state_dir`` hold only a state of this very run. Returns True when an earlier,
    unfinished attempt of the same run may be resumed from it; otherwise the folder is emptied
    (saying why in ``log``) and stamped with ``identity`` for the checkpoints to come."""
    state_dir = Path(state_dir)
    stamp = state_dir / IDENTITY
    if stamp.exists():
        try:
            old = json.loads(stamp.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old == identity:
            return True
        why = "; ".join(_differences(old, identity)) if isinstance(old, dict) else f"unreadable {stamp}"
        print(f"[{name}] starting fresh: the state in {state_dir} belongs to another run ({why})", file=log, flush=True)
    elif state_dir.exists() and any(state_dir.iterdir()):
        print(f"[{name}] starting fresh: {state_dir} has no {IDENTITY}, so its state cannot be trusted", file=log, flush=True)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    from sailflow.io import write_json  # atomic

    write_json(stamp, identity)
    return False


def finish_state(state_dir: str | os.PathLike) -> None:
    """Remove a finished run's state (call after its final outputs are written): a rerun of a finished
    run (``--forcerun``, or new inputs) then starts from scratch instead of resuming."""
    state_dir = Path(state_dir)
    if state_dir.exists():
        (state_dir / IDENTITY).unlink(missing_ok=True)  # first: a half-removed folder is never trusted
        shutil.rmtree(state_dir, ignore_errors=True)


def save_checkpoint(path: str | os.PathLike, model, optimizer, step: int, fingerprint: str,
                    meta: dict[str, str] | None = None, tensors: dict | None = None) -> None:
    """Write ``model``'s state dict, ``optimizer``'s tensors, the torch RNG state and ``step`` to
    ``path`` (safetensors), atomically. ``fingerprint`` identifies the run (checked on load)."""
    import torch
    from safetensors.torch import save_file

    from sailflow.io import atomic_path

    names = {p: n for n, p in model.named_parameters()}
    out = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"optim.{names[p]}.{k}"] = v.detach().cpu().contiguous()
    out["rng.torch"] = torch.get_rng_state()
    out.update(tensors or {})
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata={"step": str(step), "fingerprint": fingerprint, **(meta or {})})


def load_checkpoint(path: str | os.PathLike, model, optimizer, fingerprint: str, log=sys.stderr, name: str = "train"):
    """Restore what :func:`save_checkpoint` wrote (strictly) into ``model`` and ``optimizer`` and the
    torch RNG; return ``(step, metadata, tensors)``, or None when there is no checkpoint of this run."""
    path = Path(path)
    if not path.exists():
        return None
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    if meta.get("fingerprint") != fingerprint:
        print(f"[{name}] starting fresh: {path} was written by another run", file=log, flush=True)
        return None
    t = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")}, strict=True)
    params = dict(model.named_parameters())
    for key, v in t.items():
        if key.startswith("optim."):
            pname, slot = key[6:].rsplit(".", 1)
            optimizer.state[params[pname]][slot] = v.to(params[pname].device)
    torch.set_rng_state(t["rng.torch"])
    step = int(meta["step"])
    print(f"[{name}] resumed from step {step} ({path})", file=log, flush=True)
    return step, meta, t
