"""Planning time of the workflow, measured here rather than asserted in tests (a test must not
fail on a slow or busy machine). Two dry runs (`snakemake -n`) with the repository's config, each
in an empty folder (nothing downloaded, no evaluation data present):

    demo    the default targets (the embedded demo, URLs -> eval.json and report figures); goal < 10 s
    sail_l  both SAIL-L runs' eval.json with the real datasets' chunk counts (CC3M + CC12M +
            YFCC15M, ~23M pairs), --cores 32 --resources gpu=8; goal < 15 s

Prints one JSON line: per plan, seconds, job count, whether it met its goal, jobs per rule.

    python benchmarks/dag.py [--targets results/sail_l_nv2/eval.json ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plan(args: list[str]) -> tuple[float, dict[str, int]]:
    """Seconds and {rule: jobs} of ``snakemake -n ARGS`` in an empty folder with the repository's config."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config").mkdir()
        shutil.copy(REPO / "config" / "config.yaml", Path(d) / "config" / "config.yaml")
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", d, "-n", *args, "--quiet", "rules"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"snakemake -n {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    table = proc.stdout.split("Job stats:", 1)[1]
    return seconds, {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", nargs="+", default=["results/sail_l_nv2/eval.json", "results/sail_l_gte/eval.json"])
    a = ap.parse_args()
    res = {"benchmark": "dag"}
    for name, args, goal in (("demo", [], 10), ("sail_l", [*a.targets, "--cores", "32", "--resources", "gpu=8"], 15)):
        seconds, jobs = plan(args)
        res[name] = {"targets": args[: len(a.targets)] if name == "sail_l" else "default", "plan_seconds": round(seconds, 2),
                     "jobs": jobs.pop("total"), f"under_{goal}_s": seconds < goal, "jobs_per_rule": jobs}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
