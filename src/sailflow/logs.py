"""Per-job log files for workflow scripts."""

from __future__ import annotations

import sys


def log_to(path: str):
    """Send this process's stdout and stderr (prints, warnings, tracebacks, tqdm) to ``path``.

    Returns the open, line-buffered file, for passing to subprocesses.
    """
    f = open(path, "a", buffering=1, encoding="utf-8")
    sys.stdout = sys.stderr = f
    return f
