"""Shared helpers: run the real workflow in a scratch folder, build test images."""

from __future__ import annotations

import ast
import copy
import fcntl
import functools
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share two cores: OpenMP threads that wait for work sleep instead of spinning, or each
    # worker's torch threads take CPU from the other's (set before anything imports torch).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# What a job reads from the environment to choose its devices and processes. Every later test's workflow
# inherits the pytest worker's environment, so a test that leaves one of them changed breaks tests far from it:
# claim_devices sets CUDA_VISIBLE_DEVICES in the process that claims, and one test that claimed two fake GPUs
# in the worker made every later LLaVA stage of that worker run as two torchrun processes (seen in CI).
DEVICE_ENVIRONMENT = ("CUDA_VISIBLE_DEVICES", "SAILFLOW_FAKE_GPU_COUNT", "SAILFLOW_GPU_LOCK_DIR", "OMP_NUM_THREADS",
                      "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _device_environment_unchanged():
    """A test that leaves :data:`DEVICE_ENVIRONMENT` changed fails (its teardown names what it left) and the
    variables are put back, so the tests after it run as they would alone."""
    before = {k: os.environ.get(k) for k in DEVICE_ENVIRONMENT}
    yield
    left = {k: os.environ.get(k) for k in DEVICE_ENVIRONMENT if os.environ.get(k) != before[k]}
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if left:
        pytest.fail(f"the test left {left} in the environment (was {[before[k] for k in left]}); use monkeypatch")


def snakemake(workdir: Path, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m snakemake`` on the repo's Snakefile with ``workdir`` as working directory."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
                             f"{failed_job_logs(workdir, proc.stdout + proc.stderr)}")
    return proc


def failed_job_logs(workdir: Path, output: str, chars: int = 4000) -> str:
    """The ends of the log files of the jobs that failed (Snakemake names them in ``output`` and prints only
    their paths): a failure on a CI machine must show its cause, not where to find it on a deleted folder."""
    names = []
    for line in re.findall(r"^\s*log: (.+?) \(check log file", output, flags=re.M):
        names += [n.strip() for n in line.split(", ") if n.strip() not in names]
    return "".join(f"\n----- {n} (its end) -----\n{(workdir / n).read_text(errors='replace')[-chars:]}"
                   for n in names if (workdir / n).is_file())


def write_config(workdir: Path, cfg: dict) -> Path:
    """Write ``workdir/config/config.yaml`` (the path the Snakefile's configfile names)."""
    p = workdir / "config" / "config.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def fake_commands(folder: Path, scripts: dict[str, str]) -> Path:
    """Executable bash scripts ``{name: body}`` in ``folder`` (put it first on PATH): stand-ins for
    cluster commands such as sbatch, recording what they were called with."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/bash\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def repo_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def planned_jobs(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def train_losses(path: Path) -> list[float]:
    """The losses a trainer's ``train_log.jsonl`` at ``path`` records, in order (its other records skipped)."""
    import json

    records = (json.loads(line) for line in path.read_text().splitlines())
    return [r["loss"] for r in records if "loss" in r]


def job_inputs(stdout: str, rule: str) -> list[str]:
    """The input files of the planned jobs of ``rule`` (a dry run's job blocks)."""
    found = []
    for block in stdout.split("\nrule ")[1:]:
        if block.startswith(f"{rule}:"):
            m = re.search(r"^\s+input: (.*)$", block, re.M)
            found += m.group(1).split(", ") if m else []
    return found


def placeholders(workdir: Path, cfg: dict, run: str) -> list[str]:
    """Empty stand-ins for the files a LLaVA run reads that no rule makes: its stages' JSON records and its
    benchmarks' files (a dry run only checks that they exist)."""
    from sailflow.llava import benchmarks, vqascore

    r = cfg["llava_runs"][run]
    made = {f"results/ocr/{name}.json": spec["json"] for name, spec in cfg.get("ocr_sets", {}).items()}  # rule ocr's
    files = [made.get(d["json"], d["json"]) for stage in ("pretrain", "finetune") for d in r[stage]["data"] if "json" in d]
    for task in r["eval"]:
        spec = cfg["llava_eval_tasks"][task]
        files += vqascore.spec_files(spec, cfg["eval_tasks"]) if spec["kind"] == "vqascore" else benchmarks.spec_files(spec)
    for f in files:
        (workdir / f).parent.mkdir(parents=True, exist_ok=True)
        (workdir / f).touch()
    return files


def solid(rgb, size=(64, 64), mode="RGB", fmt="PNG", **save) -> bytes:
    """An image of one colour, encoded in memory."""
    img = Image.new("RGB", size, rgb)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def noisy_jpeg(seed: int, size=(64, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@functools.cache
def _fixtures_used(module: Path) -> frozenset[str]:
    """The arguments of the module's test functions (read from its source)."""
    tree = ast.parse(module.read_text())
    return frozenset(a.arg for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name.startswith("test") for a in f.args.args)


def _unit(module: Path) -> str:
    """The unit of work a test module belongs to under pytest-xdist (`make test` runs one worker per core):
    the modules with tests that take the session's `demo` run form one unit (they read and dry-run that
    one folder, one after the other), every other module is its own (its fixtures are built once). Read
    from the module's source, so that the scheduler (which collects nothing) and the workers agree."""
    return "demo" if "demo" in _fixtures_used(module) else module.stem


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with our units as the scopes, in collection order (`--no-loadscope-reorder`)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(config.rootpath / nodeid.split("::", 1)[0])

    return ByUnit(config, log)


def pytest_collection_modifyitems(config, items):
    """The demo's unit first: the shared demo run is the longest piece of work, so it starts at once while
    the other worker takes the rest; the modules that run more of the workflow on a copy of it
    (`demo_copy`) last, when it is there. The Slurm tests' module last when one process runs everything:
    once Slurm's tools are installed and a slurm.conf is in reach, every `snakemake` call (the Slurm plugin
    is installed) asks slurmctld for its config at start-up, which takes ~10 s whenever no slurmctld
    answers. Under xdist it comes second: its cluster is up while it runs, and its tests mostly wait for
    Slurm's status checks, which overlaps the other worker's computing. The order within a unit is kept,
    except that in a `demo_copy` module the tests that take a copy (minutes each) come first: xdist hands
    a worker its next unit when two of its tests are left, so a long test run last would take the next
    long module to the same worker while the other one runs out of work (measured: 220 s idle)."""
    slurm = {i.path for i in items if i.get_closest_marker("slurm") is not None}
    xdist = hasattr(config, "workerinput")  # this is an xdist worker
    first = {}  # a module's place in collection order: keeps each module's tests together
    for n, item in enumerate(items):
        first.setdefault(item.path, n)

    def rank(item) -> int:
        if _unit(item.path) == "demo":
            return 0
        if item.path in slurm:
            return 1 if xdist else 4
        return 3 if "demo_copy" in _fixtures_used(item.path) else 2

    def key(item) -> tuple[int, int, bool]:
        r = rank(item)
        return r, first[item.path], r == 3 and "demo_copy" not in getattr(item, "fixturenames", ())

    items[:] = sorted(items, key=key)  # stable


# The suite's demo trains llava_demo's stage 2 for fewer epochs than `make demo` (the README gives both
# runs' numbers): 784 steps instead of 3,920, about 11 minutes less inside the suite's time.
SUITE_DEMO_FINETUNE_EPOCHS = 8


def suite_demo_config() -> dict:
    """The repo's config with llava_demo's stage 2 shortened to SUITE_DEMO_FINETUNE_EPOCHS."""
    cfg = repo_config()
    cfg["llava_runs"]["llava_demo"]["finetune"]["epochs"] = SUITE_DEMO_FINETUNE_EPOCHS
    return cfg


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The embedded demo as `make demo` runs it (`snakemake --cores 2`: URLs to eval.json, the report
    figures and the llava_demo chat model; the repo's config but for llava_demo's shorter stage 2, see
    SUITE_DEMO_FINETUNE_EPOCHS), once per session: under xdist, the first worker that needs it builds it
    (holding a lock) and the others wait for it. Its tests only read it or dry-run it (a test that edits
    its config restores it); a test that runs more of the workflow takes `demo_copy`."""
    cfg = suite_demo_config()

    def build(workdir: Path) -> None:
        write_config(workdir, cfg)
        snakemake(workdir, "--cores", "2", timeout=3600)

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        workdir = tmp_path_factory.mktemp("demo")
        build(workdir)
        return workdir, cfg
    shared = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    workdir, done, failed = shared / "demo", shared / "demo.done", shared / "demo.failed"
    with open(shared / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if failed.exists():
            pytest.fail(f"the shared demo run failed on another worker:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            try:
                build(workdir)
            except Exception as e:  # a failed or timed-out run: the other workers fail at once, not run it again
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
            done.touch()
    return workdir, cfg


@pytest.fixture
def demo_copy(demo, tmp_path):
    """A private copy of the session's demo run, with the repo's config: for a test that changes the config
    and runs more of the workflow, while other tests read the shared one. The copy keeps the files'
    modification times and Snakemake's records, so Snakemake finds it as up to date as the original."""
    src, cfg = demo
    workdir = tmp_path / "demo"
    # without Snakemake's locks, which another test's run in the shared folder may hold at this moment
    shutil.copytree(src, workdir, symlinks=True, ignore=lambda d, names: ["locks"] if Path(d).name == ".snakemake" else [])
    write_config(workdir, cfg)
    return workdir, copy.deepcopy(cfg)


# ---- a tiny trained LLaVA (tests/test_llava_train.py, tests/test_llava_eval.py) ----------------------


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """Tiny LLaVA parts (tests/llava_parts.py): a CLIP tower, a LLaMA and its tokenizer, coloured squares."""
    from llava_parts import build_parts

    return build_parts(tmp_path_factory.mktemp("llava_parts"))


@pytest.fixture(scope="session")
def stage1(parts, tmp_path_factory):
    """Stage 1 trained on the parts' captions."""
    from llava_parts import stage_args
    from sailflow.llava.train import train_stage

    out = tmp_path_factory.mktemp("stage1") / "pretrain"
    train_stage(stage_args(parts, "pretrain", out, epochs=2), log=open(os.devnull, "w"))
    return out


@pytest.fixture(scope="session")
def stage2(parts, stage1, tmp_path_factory):
    """Stage 2 trained on the parts' records after stage 1."""
    from llava_parts import stage_args
    from sailflow.llava.train import train_stage

    out = tmp_path_factory.mktemp("stage2") / "finetune"
    args = stage_args(parts, "finetune", out, epochs=3)
    args["previous"] = str(stage1)
    train_stage(args, log=open(os.devnull, "w"))
    return out
