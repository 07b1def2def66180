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


def test_every_gpu_rule_has_its_slurm_resources():
    """A rule that asks for GPUs (``resources: gpu=``) goes to the GPU partition with the profile's settings
    (or is put on the CPU partition with gpu: 0 on purpose); one that may ask for several also asks for
    one node (torchrun --standalone needs them on one machine)."""
    import re

    import yaml

    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["set-resources"]
    rules = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)+)", smk.read_text(), flags=re.M):
            m = re.search(r"^        gpu=(.+)$", body, flags=re.M)
            if m and m.group(1).strip() not in ("0", "llava_score_gpus"):
                rules[name] = m.group(1).strip()
    assert {"align", "encode_images", "llava_finetune", "llava_answers", "llava_vqascore"} <= set(rules)
    for name, gpu in rules.items():
        entry = profile.get(name)
        assert entry is not None, f"rule {name} asks for gpu={gpu} but profiles/slurm/config.yaml has no set-resources for it"
        if entry.get("gpu") == 0:  # taken off the GPU on purpose (evaluate: a matrix product)
            assert entry["slurm_partition"] == "?cpu_partition", name
            continue
        assert entry["slurm_partition"] == "?gpu_partition", name
        if entry.get("gpu") != 1 and gpu != "1" and "min(1" not in gpu:  # may be more than one GPU
            assert entry.get("nodes") == 1 and entry.get("tasks") == 0, name
