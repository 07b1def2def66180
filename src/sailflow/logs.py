"""Per-job log files for workflow scripts."""

from __future__ import annotations

import os
import socket
import sys
from datetime import datetime
from pathlib import Path


def attempt_separator() -> str:
    """The line that starts a new attempt in a log that already has content: when, where, which process."""
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    return f"===== {now} new attempt ({socket.gethostname()}, pid {os.getpid()}) =====\n"


def _keep_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.attempts")


def log_to(path: str):
    """Send this process's stdout and stderr (prints, warnings, tracebacks, tqdm) to ``path``.

    Every attempt of a job appends to the same log: a retry (Snakemake's ``retries``, a Slurm job
    resubmitted after its time limit) or a rerun keeps what the earlier attempts wrote, and a separator
    line marks where this attempt starts. Snakemake deletes a job's log before each attempt, so the log
    also has a second name, ``.<name>.attempts`` beside it (a hard link: the same file, no copy),
    from which the next attempt restores it. Returns the open, line-buffered file, for passing to
    subprocesses.
    """
    path = Path(path)
    keep = _keep_path(path)
    if not path.exists() and keep.exists():
        try:
            os.link(keep, path)  # the earlier attempts, under the log's own name again
        except OSError:
            pass
    f = open(path, "a", buffering=1, encoding="utf-8")
    try:
        if not (keep.exists() and os.path.samefile(keep, path)):
            keep.unlink(missing_ok=True)
            os.link(path, keep)
    except OSError:  # a file system without hard links: the log then holds this attempt only
        pass
    if f.tell() > 0:  # in append mode the position is the end of what is already there
        f.write(attempt_separator())
    sys.stdout = sys.stderr = f
    return f
