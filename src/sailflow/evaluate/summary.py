"""A run's evaluation summary: every metric of every task, with what produced them."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def git_commit(path: str | Path) -> dict | None:
    """The commit of the checkout holding ``path`` and whether it had uncommitted changes (None
    outside a git checkout)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def dataset_counts(manifest: dict) -> dict:
    return {k: manifest[k] for k in ("input_rows", "downloaded", "kept", "dropped", "empty_captions") if k in manifest}


def summarize(run: str, task_results: dict[str, dict], align_config: dict, manifests: list[dict], fingerprint: str, code_dir) -> dict:
    """``task_results``: task name -> that task's result file (see workflow/scripts/evaluate.py)."""
    return {
        "run": run,
        "fingerprint": fingerprint,
        "git": git_commit(code_dir),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "vision": align_config["vision"], "text": align_config["text"],
        "backbones": {"vision": align_config["vision_backbone"], "text": align_config["text_backbone"]},
        "data": {"sources": align_config["data"], "train_pairs": align_config["pairs"],
                 "datasets": {m["dataset"]: dataset_counts(m) for m in manifests}},
        "align": {"steps": align_config["steps"], "settings": align_config["settings"], "holdout": align_config.get("holdout")},
        "metrics": {f"{t}/{k}": v for t, r in task_results.items() for k, v in r["metrics"].items()},
        "tasks": {t: {k: r[k] for k in ("kind", "task", "metrics", "counts", "chance", "tie_rule")} for t, r in task_results.items()},
    }
