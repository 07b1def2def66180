"""Planning time of the full SAIL-L runs: `snakemake -n` of both sail_l runs' eval.json with the
repository's config (real datasets' chunk counts: CC3M + CC12M + YFCC15M, ~23M pairs), in an empty
folder (nothing downloaded, no evaluation data present). Prints one JSON line: seconds, job count,
jobs per rule.

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", nargs="+", default=["results/sail_l_nv2/eval.json", "results/sail_l_gte/eval.json"])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config").mkdir()
        shutil.copy(REPO / "config" / "config.yaml", Path(d) / "config" / "config.yaml")
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", d, "-n", *a.targets,
               "--quiet", "rules", "--cores", "32", "--resources", "gpu=8"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    table = proc.stdout.split("Job stats:", 1)[1]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    total = jobs.pop("total")
    print(json.dumps({"benchmark": "dag", "targets": a.targets, "plan_seconds": round(seconds, 2), "jobs": total,
                      "under_15_s": seconds < 15, "jobs_per_rule": jobs}))


if __name__ == "__main__":
    main()
