"""Atomic file output: every file appears under its final name only when complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name starts with a dot and ends in ``.tmp-<pid>`` so a killed writer leaves
    nothing that looks finished. On error the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _remove_stale_temporaries(final: Path) -> None:
    """Delete temporaries of ``final`` left by writers that were killed (their pid is gone)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _strict(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers (Python's json writes invalid ``NaN``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (non-finite numbers as null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(obj), indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n")


def jsonl(lines) -> str:
    """JSON Lines text: one strict JSON object per line (non-finite numbers as null)."""
    return "".join(json.dumps(_strict(x), ensure_ascii=False, allow_nan=False) + "\n" for x in lines)


def write_jsonl(path: str | os.PathLike, lines) -> None:
    """Write ``lines`` as JSON Lines, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(jsonl(lines), encoding="utf-8")


def write_parquet(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame to parquet (no index), atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
