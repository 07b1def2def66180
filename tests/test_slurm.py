"""The Slurm profile against a real Slurm: Debian's packages (Slurm 22.05), one node on 127.0.0.1
with two fake GPUs (gres over dummy character devices), started and stopped by this module.

`snakemake --profile slurm` runs the demo chain as users type it, the profile's own file with only
what it documents as the things to edit (partitions, account) set, and the numbers must equal a
local run's. A failing job and a job cancelled from outside (scancel) must fail the workflow, naming
the job, without a hang. Plus one test without Slurm: the sbatch line the plugin builds for SAIL-L's
8-GPU alignment (fake sbatch).

Off by default (it needs root and the packages): SAILFLOW_TEST_SLURM=install installs Debian's Slurm
packages with apt-get and runs it (what CI does); SAILFLOW_TEST_SLURM=1 uses an installed Slurm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, fake_commands, repo_config, write_config

MODE = os.environ.get("SAILFLOW_TEST_SLURM", "")
HOW = ("SAILFLOW_TEST_SLURM=install make test installs Debian's Slurm packages (apt-get, as root) and runs it; "
       "SAILFLOW_TEST_SLURM=1 uses an already installed Slurm")
needs_slurm = pytest.mark.skipif(MODE not in ("install", "1"), reason=f"needs a Slurm cluster: {HOW}")

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "sbatch", "squeue", "scancel", "scontrol", "sinfo"]
CPU_PARTITION, GPU_PARTITION = "sf_cpu", "sf_gpu"  # not the profile's defaults: the test sets them as a user would


# ---- processes: every one bounded, and its whole process group ended on the way out ----------------

def _end(proc: subprocess.Popen, first=signal.SIGTERM, grace: float = 30) -> None:
    """End a process started in its own session, with everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, first)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


class Started:
    """A command running in its own session, output to a file (a full pipe would block it). ``finish``
    waits for it, bounded: past the deadline, or on any exception while waiting, the whole process
    group is ended (``first`` signal, then SIGKILL; SIGINT lets snakemake scancel its jobs)."""

    def __init__(self, cmd, *, env=None, cwd=None, first=signal.SIGTERM):
        self.cmd, self.first = [str(c) for c in cmd], first
        self.out = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.cmd, env=env, cwd=cwd, stdout=self.out, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)

    def output(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def stop(self) -> None:
        """End it now, if it still runs (after another part of a test failed)."""
        if self.proc.poll() is None:
            _end(self.proc, self.first)

    def finish(self, timeout: float, check: bool = False) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end(self.proc, self.first)
            raise AssertionError(f"{' '.join(self.cmd)} still running after {timeout:.0f} s:\n{self.output()[-8000:]}")
        finally:
            if self.proc.poll() is None:  # interrupted while waiting
                _end(self.proc, self.first)
        result = subprocess.CompletedProcess(self.cmd, self.proc.returncode, self.output(), "")
        self.out.close()
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(self.cmd)} failed ({result.returncode}):\n{result.stdout[-8000:]}")
        return result


def run(cmd, *, timeout: float, env=None, cwd=None, check=False) -> subprocess.CompletedProcess:
    return Started(cmd, env=env, cwd=cwd).finish(timeout, check)


# ---- the cluster ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_named(name: str) -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "comm").read_text().strip() == name:
                pids.add(int(p.name))
        except OSError:
            pass
    return pids


def _install() -> None:
    if all(shutil.which(b) for b in BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    if run(install, env=env, timeout=900).returncode != 0:  # a fresh machine may have no package lists yet
        run(["apt-get", "update", "-q"], env=env, timeout=900, check=True)
        run(install, env=env, timeout=900, check=True)


class Cluster:
    """slurmctld + slurmd + munged in the foreground, ports picked free, state and logs in one temporary
    folder. The configuration is where Slurm looks by default, /etc/slurm (as on a cluster): the plugin
    runs each job's command through `srun` with every SLURM_* variable but the job's ids removed, so a
    SLURM_CONF elsewhere would not reach it. Those two files are written only where there are none (or
    ours, left by a killed session) and removed at the end. The node claims 64 CPUs and 1 TB
    (SlurmdParameters=config_overrides) so that the profile's requests fit as they would on a real GPU
    node; nothing is enforced (no cgroups), the jobs share this machine's cores."""

    ETC = Path("/etc/slurm")
    MARK = "# written by sailflow's tests/test_slurm.py; removed when its cluster stops\n"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sailflow-slurm-"))
        self.dir.chmod(0o755)  # munged runs as user munge
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.ETC / "slurm.conf"
        self.gres = self.ETC / "gres.conf"
        self.written: list[Path] = []
        self.env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        self.daemons: dict[str, subprocess.Popen] = {}
        self.stepds_before = _pids_named("slurmstepd")

    def cmd(self, *args, timeout: float = 60, check=True) -> subprocess.CompletedProcess:
        return run(list(args), env=self.env, timeout=timeout, check=check)

    def _daemon(self, name: str, cmd: list[str], user: str | None = None) -> None:
        """A daemon in the foreground, our own child (so that we reap it), in a session of its own."""
        log = open(self.dir / f"{name}.out", "w")
        as_user = dict(user=user, group=user, extra_groups=[]) if user else {}
        self.daemons[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                              **as_user)
        log.close()

    def start(self) -> None:
        d, h = self.dir, self.host
        for p in (self.conf, self.gres):
            if p.exists() and not p.read_text().startswith(self.MARK):
                raise RuntimeError(f"{p} exists: this machine has a Slurm configuration, which this test would replace")
        munge = d / "munge"
        munge.mkdir()
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for p in (munge, key):
            shutil.chown(p, "munge", "munge")
        sock = munge / "munge.socket"
        self._daemon("munged", ["/usr/sbin/munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                                f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                                f"--seed-file={munge / 'munged.seed'}"], user="munge")
        (d / "dev").mkdir()
        for i in range(2):  # gres needs character devices; these are never opened
            os.mknod(d / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(195, i))
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        self.ETC.mkdir(parents=True, exist_ok=True)
        self.written = [self.conf, self.gres]
        # MinJobAge (how long finished jobs stay in squeue) well over the plugin's status interval, and
        # long enough to inspect every job of this module afterwards. EnforcePartLimits: a runtime over a
        # partition's MaxTime (24 h / 48 h, as on many clusters) is refused at submission, not left pending.
        self.conf.write_text(self.MARK + f"""\
ClusterName=sailflowtest
SlurmctldHost={h}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
MinJobAge=3600
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName={h} NodeAddr=127.0.0.1 CPUs=64 Boards=1 SocketsPerBoard=1 CoresPerSocket=64 ThreadsPerCore=1 RealMemory=1000000 Gres=gpu:2 State=UNKNOWN
PartitionName={CPU_PARTITION} Nodes={h} Default=YES MaxTime=1-00:00:00 State=UP
PartitionName={GPU_PARTITION} Nodes={h} MaxTime=2-00:00:00 State=UP
""")
        self.gres.write_text(self.MARK + f"NodeName={h} Name=gpu File={d}/dev/nvidia[0-1]\n")
        deadline = time.monotonic() + 60
        while not sock.exists():
            if self.daemons["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self._logs()}")
            time.sleep(0.1)
        self._daemon("slurmctld", ["/usr/sbin/slurmctld", "-D", "-f", str(self.conf)])
        self._daemon("slurmd", ["/usr/sbin/slurmd", "-D", "-f", str(self.conf)])
        deadline = time.monotonic() + 120
        while True:
            states = self.cmd("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
            if states and all(s == "idle" for s in states):
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.daemons.values()):
                raise RuntimeError(f"the node is not idle ({states}):\n{self._logs()}")
            time.sleep(0.5)

    def _logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.dir.rglob("*.log")) + sorted(self.dir.glob("*.out"))
                         if p.is_file())

    def jobs(self) -> list[dict]:
        """Every job the cluster knows (finished ones too, for MinJobAge), with the rule the plugin names in
        its comment (`rule_<rule>` or `rule_<rule>_wildcards_<values>`)."""
        out = self.cmd("squeue", "--states=all", "-h", "-o", "%i|%k|%P|%T").stdout
        jobs = [dict(zip(("id", "comment", "partition", "state"), line.split("|"))) for line in out.splitlines() if line]
        for j in jobs:
            j["rule"] = j["comment"].removeprefix("rule_").split("_wildcards_")[0] if j["comment"].startswith("rule_") else None
        return jobs

    def show(self, job_id: str) -> dict:
        out = self.cmd("scontrol", "show", "job", "-o", job_id).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def stop(self) -> None:
        try:
            deadline = time.monotonic() + 60
            while "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None and time.monotonic() < deadline:
                active = [j["id"] for j in self.jobs() if j["state"] in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")]
                if not active:
                    break
                self.cmd("scancel", "--full", *active, check=False)
                time.sleep(1)
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                if name in self.daemons:
                    _end(self.daemons[name], grace=20)
            for pid in _pids_named("slurmstepd") - self.stepds_before:  # started by our slurmd for our jobs
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in self.written:
                p.unlink(missing_ok=True)
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail(f"SAILFLOW_TEST_SLURM={MODE}: starting Slurm's daemons needs root")
    if MODE == "install":
        _install()
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        pytest.fail(f"SAILFLOW_TEST_SLURM={MODE} but {missing} are not installed: apt-get install {' '.join(PACKAGES)}, "
                    "or SAILFLOW_TEST_SLURM=install")
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


# ---- running snakemake as users do ------------------------------------------------------------------

def user_env(slurm: bool = False, **extra) -> dict:
    """This session's environment with the venv first on PATH, none of the fake-GPU settings; for the
    Slurm runs, the partitions and account that the profile documents as the things to edit."""
    env = {k: v for k, v in os.environ.items() if k not in ("SAILFLOW_FAKE_GPU_COUNT", "CUDA_VISIBLE_DEVICES", "SLURM_CONF")}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if slurm:
        # What the profile documents as the things to edit, set the way it offers without editing it.
        env.update(SAILFLOW_SLURM_CPU_PARTITION=CPU_PARTITION, SAILFLOW_SLURM_GPU_PARTITION=GPU_PARTITION,
                   SAILFLOW_SLURM_ACCOUNT="")
    env.update(extra)
    return env


# The profile's first status check comes 40 s after a submission, and the interval then grows by 10 s
# per check up to 180 s (back to the first after a job succeeds): right for a cluster, minutes of waiting
# for this toy chain of 8 dependent levels of 10-40 s jobs.
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "5"]


def slurm_snakemake(workdir: Path, *args, snakefile: Path = REPO / "Snakefile") -> Started:
    """Start `snakemake --profile slurm ...` in ``workdir``, where `slurm` links to the repo's profile
    as it does at the repo root."""
    link = workdir / "slurm"
    if not link.is_symlink():
        link.symlink_to(REPO / "profiles" / "slurm")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", snakefile, "--profile", "slurm", *FAST_STATUS, *args]
    return Started(cmd, cwd=workdir, env=user_env(slurm=True), first=signal.SIGINT)


def demo_config() -> dict:
    """tests/test_workflow_plan.py's small demo (40 images), aligned by 2 processes. Fewer jobs for two
    cores: one chunk, two of the five evaluation tasks (a classification, a retrieval; every kind goes
    through the same rules)."""
    cfg = repo_config()
    cfg["demo"].update(n_train=40, n_eval=8, eval_sets={"winoground_examples": 3, "mmvp_pairs_per_pattern": 1})
    cfg["runs"]["demo"]["align"].update(batch_size=16, epochs=2, checkpoint_every=1)
    cfg["runs"]["demo"]["gpus"] = 2
    cfg["runs"]["demo"]["eval"] = ["demo_shape", "demo_retrieval"]
    cfg["datasets"]["shapes"]["n_chunks"] = 1
    return cfg


@pytest.mark.slurm
@needs_slurm
def test_demo_chain_on_slurm_equals_a_local_run(cluster, tmp_path):
    cfg = demo_config()
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    for d in (on_slurm, local):
        d.mkdir()
        write_config(d, cfg)

    # Both at once (the Slurm run mostly waits for its status checks). Locally: two fake devices
    # (sailflow.gpu), so the align rule runs torchrun with two processes as under Slurm, where the job's
    # CUDA_VISIBLE_DEVICES=0,1 comes from gres.
    t0, before = time.monotonic(), {j["id"] for j in cluster.jobs()}
    slurm_run = slurm_snakemake(on_slurm, "results/demo/eval.json")
    local_env = user_env(SAILFLOW_FAKE_GPU_COUNT="2", SAILFLOW_GPU_LOCK_DIR=str(tmp_path / "locks"))
    local_run = Started([sys.executable, "-m", "snakemake", "--snakefile", REPO / "Snakefile", "--cores", "2", "results/demo/eval.json"],
                        cwd=local, env=local_env)
    try:
        local_run.finish(timeout=1200, check=True)
        slurm_run.finish(timeout=1200, check=True)
    finally:
        slurm_run.stop()
    print(f"both runs: {time.monotonic() - t0:.0f} s")

    # where each job ran: compute jobs through Slurm on the partitions set for the profile, GPU jobs with
    # gres GPUs, alignment on one node with both; trivial rules on the submitting machine
    jobs = [j for j in cluster.jobs() if j["id"] not in before]
    rules = {j["rule"] for j in jobs}
    assert {"demo_shapes", "demo_eval_sets", "split_urls_shapes", "eval_summary", "build_tiny_backbone"}.isdisjoint(rules)
    assert {"normalize_urls", "download_chunk", "filter_chunk", "cleanup_shapes", "encode_images", "encode_texts",
            "eval_image_features", "eval_text_features", "align", "evaluate"} <= rules
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs
    for j in jobs:
        rule, info = j["rule"], cluster.show(j["id"])
        gpu_rule = rule in ("encode_images", "encode_texts", "eval_image_features", "eval_text_features", "align")
        assert j["partition"] == (GPU_PARTITION if gpu_rule else CPU_PARTITION), (rule, j)
        assert ("gpu" in info.get("TresPerJob", "")) == gpu_rule, (rule, info.get("TresPerJob"))
    align = cluster.show(next(j["id"] for j in jobs if j["rule"] == "align"))
    assert align["NumNodes"] == "1" and align["TresPerJob"] == "gres:gpu:2", align

    # both trained with two processes, on Slurm on the devices Slurm gave the job
    slurm_log, local_log = ((d / "logs/demo/align.log").read_text() for d in (on_slurm, local))
    assert "devices: [0, 1] (environment)" in slurm_log and "devices: [0, 1] (lock)" in local_log
    for log in (slurm_log, local_log):
        assert "--nproc_per_node=2" in log and "world 2" in log

    # the same numbers
    slurm_eval, local_eval = (json.loads((d / "results/demo/eval.json").read_text()) for d in (on_slurm, local))
    assert slurm_eval["metrics"] == local_eval["metrics"]
    assert slurm_eval["data"] == local_eval["data"]
    head = "results/demo/align/head.safetensors"
    assert (on_slurm / head).read_bytes() == (local / head).read_bytes()


FAILING = """
rule fail:
    output: "failed.txt"
    log: "fail.log"
    script: "fail.py"

rule sleep:
    output: "slept.txt"
    shell: "sleep 900 && touch {output}"
"""

FAIL_SCRIPT = """
from sailflow.logs import log_to

log_to(snakemake.log[0])
print("this attempt fails")
raise SystemExit(1)
"""


@pytest.mark.slurm
@needs_slurm
def test_a_failed_and_a_cancelled_job_fail_the_workflow(cluster, tmp_path):
    assert yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["retries"] >= 1
    # One retry is enough to see the profile's retries at work: each further attempt waits for a status
    # check 10 s later than the one before (the plugin's interval grows while no job succeeds).
    retries = 1
    failing, cancelled = tmp_path / "failing", tmp_path / "cancelled"
    for d in (failing, cancelled):
        d.mkdir()
        (d / "Snakefile").write_text(FAILING)
    (failing / "fail.py").write_text(FAIL_SCRIPT)

    fail_run = slurm_snakemake(failing, "failed.txt", "--retries", str(retries), snakefile=failing / "Snakefile")
    # A cancelled job is retried like a failed one (the profile's `retries`); one cancel is enough here.
    cancel_run = slurm_snakemake(cancelled, "slept.txt", "--retries", "0", snakefile=cancelled / "Snakefile")
    try:
        deadline = time.monotonic() + 300
        while not (running := [j for j in cluster.jobs() if j["rule"] == "sleep" and j["state"] == "RUNNING"]):
            assert cancel_run.proc.poll() is None, f"snakemake exited before its job ran:\n{cancel_run.output()[-6000:]}"
            assert time.monotonic() < deadline, f"the sleep job is not running after 300 s: {cluster.jobs()}"
            time.sleep(0.5)
        cluster.cmd("scancel", running[0]["id"])
        cancelled_out = cancel_run.finish(timeout=300)  # a hang here is the bug this test is about
        failed_out = fail_run.finish(timeout=600)
    finally:
        cancel_run.stop()
        fail_run.stop()

    assert cancelled_out.returncode != 0
    assert "Error in rule sleep" in cancelled_out.stdout and "CANCELLED" in cancelled_out.stdout, cancelled_out.stdout[-6000:]
    assert failed_out.returncode != 0
    assert "Error in rule fail" in failed_out.stdout and "'FAILED'" in failed_out.stdout, failed_out.stdout[-6000:]
    # every attempt ran through Slurm and appended to the job's log after a separator
    attempts = [j for j in cluster.jobs() if j["rule"] == "fail"]
    assert len(attempts) == 1 + retries and all(j["state"] == "FAILED" for j in attempts), attempts
    log = (failing / "fail.log").read_text().splitlines()
    assert log.count("this attempt fails") == 1 + retries
    assert sum(line.startswith("===== ") and "new attempt" in line for line in log) == retries


# ---- without Slurm: the sbatch line of SAIL-L's alignment --------------------------------------------

FAKE_SLURM = {
    "sbatch": 'echo "$@" >> "$FAKE_SBATCH_LOG"; echo 4242',
    "sacct": "exit 0",
    "squeue": "exit 0",
    "scontrol": "exit 0",
    "sinfo": "exit 0",
    "scancel": "exit 0",
}


def test_sail_l_alignment_asks_slurm_for_one_node_with_8_gpus(workdir, tmp_path):
    """The real config's sail_l_nv2 run (gpus: 8) through the profile and the plugin's own sbatch builder:
    a fake sbatch records what the plugin submits."""
    bin_dir = fake_commands(tmp_path / "bin", FAKE_SLURM)
    sbatch_log = tmp_path / "sbatch.log"
    env = user_env(FAKE_SBATCH_LOG=str(sbatch_log))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    cfg = repo_config()
    for name in {d["dataset"] for d in cfg["runs"]["sail_l_nv2"]["data"]}:
        cfg["datasets"][name]["n_chunks"] = 1  # the same jobs, a plan of 30 instead of 1,500
    write_config(workdir, cfg)
    base = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--directory", workdir]  # from the repo root, as typed

    plan = run([*base, "-n", "results/sail_l_nv2/eval.json"], cwd=REPO, env=env, timeout=300, check=True).stdout
    lines = plan[plan.index("\nrule align:") + 1:].splitlines()[1:]
    block = lines[: next(i for i, line in enumerate(lines) if not line.startswith("    "))]  # the job's indented lines
    fields = dict(line.strip().split(": ", 1) for line in block)
    resources = dict(kv.split("=", 1) for kv in fields["resources"].split(", "))
    assert resources["gpu"] == "8" and resources["nodes"] == "1" and resources["slurm_partition"] == "gpu", resources

    # its inputs, as empty files, so that the align job is submitted alone
    for p in fields["input"].split(", "):
        (workdir / p).parent.mkdir(parents=True, exist_ok=True)
        (workdir / p).touch()
    started = Started([*base, "results/sail_l_nv2/align/head.safetensors", "--allowed-rules", "align"], cwd=REPO, env=env)
    try:  # the deadline only ends a run that would otherwise hang; snakemake keeps polling the fake squeue
        deadline = time.monotonic() + 300
        while not (sbatch_log.exists() and sbatch_log.read_text().strip()):
            assert started.proc.poll() is None, f"snakemake exited without calling sbatch:\n{started.output()[-6000:]}"
            assert time.monotonic() < deadline, f"no sbatch call after 300 s:\n{started.output()[-6000:]}"
            time.sleep(0.2)
    finally:
        _end(started.proc)
    line = sbatch_log.read_text()
    print(line)
    flags = line.split(" --wrap")[0]
    assert "--comment rule_align" in flags
    assert "--nodes=1" in flags and "--gpus=8" in flags and "-p gpu" in flags
    assert "--cpus-per-gpu=4" in flags and "--mem 256000" in flags and "-t 1440" in flags
    assert "--ntasks" not in flags  # one task: torchrun starts the 8 processes itself
