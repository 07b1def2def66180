"""`snakemake --profile slurm` from the repo root: the profile resolves, and GPU rules are
submitted with the resources the profile sets (fake sbatch/sacct on PATH)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import REPO, fake_commands, repo_config, write_config

FAKE = {
    "sbatch": 'echo "$@" >> "$FAKE_SLURM_LOG"; echo 4242',
    "sacct": "exit 0",
    "squeue": "exit 0",
    "scontrol": "exit 0",
    "sinfo": "exit 0",
}


def test_slurm_profile_submits_gpu_encode_job(workdir, tmp_path):
    bin_dir = fake_commands(tmp_path / "bin", FAKE)
    log = tmp_path / "sbatch.log"
    write_config(workdir, repo_config())
    (workdir / "results/data/shapes/chunks/0000").mkdir(parents=True)
    (workdir / "results/data/shapes/chunks/0000/samples.parquet").write_bytes(b"")
    (workdir / "results/models/tiny_dinov2").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_LOG": str(log)}
    cmd = [sys.executable, "-m", "snakemake", "results/embeddings/shapes/image/tiny_dinov2/0000.safetensors",
           "--profile", "slurm", "--directory", str(workdir), "--allowed-rules", "encode_images"]
    # Wait for the submission, however long this machine takes to start Snakemake: the deadline only
    # ends a run that would otherwise hang. Output goes to a file (a full pipe would block Snakemake);
    # the log is read again after an exit, as Snakemake may submit and stop between two looks.
    out = tmp_path / "snakemake.out"

    def submitted() -> bool:
        return log.exists() and bool(log.read_text().strip())

    with open(out, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 600
            while not submitted():
                if proc.poll() is not None and not submitted():
                    raise AssertionError(f"snakemake exited ({proc.returncode}) without calling sbatch:\n{out.read_text()[-6000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no sbatch call after 600 s:\n{out.read_text()[-6000:]}")
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait()
    line = log.read_text()
    assert "--gpus=1" in line and "-p gpu" in line and "--cpus-per-gpu=8" in line and "--mem 64000" in line
    assert "rule_encode_images" in line
