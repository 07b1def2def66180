"""Which accelerator a job uses.

Snakemake counts GPUs (``resources: gpu=1``) but never sets CUDA_VISIBLE_DEVICES for local jobs.
So a local job claims free devices itself: one lock file per device, held with ``flock`` for the
life of the process (the kernel releases it on exit or crash, so a killed job frees its device).
Under Slurm the job's allocation (CUDA_VISIBLE_DEVICES) is used as it is; a CUDA_VISIBLE_DEVICES that
a person exported limits the devices the jobs claim from. With no GPU the job runs on the CPU.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LOCK_DIR = Path(os.environ.get("SAILFLOW_GPU_LOCK_DIR", "/tmp/sailflow-gpu-locks"))


@dataclass
class Claim:
    """Devices held by this process. ``device`` is what to pass to torch (``cuda:0`` or ``cpu``)."""

    ids: list[int]
    source: str  # "lock", "environment" or "cpu"
    _files: list = field(default_factory=list, repr=False)

    @property
    def device(self) -> str:
        """``cuda:0`` (the first claimed device) when torch sees a GPU; ``cpu`` otherwise, also when a
        scheduler handed out devices this process cannot use (fake GPUs in tests, a driver missing)."""
        if not self.ids:
            return "cpu"
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"

    def release(self) -> None:
        for f in self._files:
            f.close()
        self._files.clear()


def device_count() -> int:
    """Visible CUDA devices; ``SAILFLOW_FAKE_GPU_COUNT`` overrides it (tests of the claiming logic)."""
    fake = os.environ.get("SAILFLOW_FAKE_GPU_COUNT")
    if fake is not None:
        return int(fake)
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def claim_devices(n: int = 1, lock_dir: str | Path = DEFAULT_LOCK_DIR, timeout: float = 3600.0, poll: float = 0.5) -> Claim:
    """Claim ``n`` devices and set CUDA_VISIBLE_DEVICES to them (the process then sees cuda:0..n-1).

    Waits (up to ``timeout`` s) while other jobs hold the devices: Snakemake's ``--resources gpu=N``
    already limits how many GPU jobs run at once, so a wait here is short.

    When CUDA_VISIBLE_DEVICES is already set, the job chooses among those devices only: all of them when
    they are ``n`` (a scheduler's allocation), the first ``n`` under Slurm (the allocation is the job's own),
    else ``n`` of them by the same locks. A person who exports ``CUDA_VISIBLE_DEVICES=0,1`` to keep a
    workflow on two GPUs has every job see both: taking them all would run each one-GPU job on GPU 0, side
    by side, and a one-GPU training as two processes. ``n = 0`` is the CPU.
    """
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if n == 0:
        return Claim(ids=[], source="cpu")
    if given is not None and given.strip() != "":
        visible = [x.strip() for x in given.split(",") if x.strip()]
        if len(visible) < n:
            raise RuntimeError(f"this job needs {n} GPUs but CUDA_VISIBLE_DEVICES={given} gives {len(visible)}")
        if len(visible) == n or os.environ.get("SLURM_JOB_ID"):
            if len(visible) > n:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible[:n])
            return Claim(ids=list(range(n)), source="environment")
        return _claim_by_lock(visible, n, Path(lock_dir), timeout, poll)
    total = device_count()
    if total == 0:
        return Claim(ids=[], source="cpu")
    if n > total:
        raise RuntimeError(f"this job needs {n} GPUs but the machine has {total}")
    return _claim_by_lock([str(i) for i in range(total)], n, Path(lock_dir), timeout, poll)


def _claim_by_lock(devices: list[str], n: int, lock_dir: Path, timeout: float, poll: float) -> Claim:
    """``n`` of ``devices`` (CUDA_VISIBLE_DEVICES entries: indices, or UUIDs) that no other process holds,
    one ``flock``-ed file per device; ``ids`` are their positions in ``devices``."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        held = []
        for device in devices:
            f = open(lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9-]', '_', device)}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")  # who holds it, for a person looking at the lock folder
            f.flush()
            held.append((device, f))
            if len(held) == n:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(d for d, _ in held)
                return Claim(ids=[devices.index(d) for d, _ in held], source="lock", _files=[f for _, f in held])
        for _, f in held:
            f.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {n} free GPU(s) among {devices} after {timeout:.0f} s (locks in {lock_dir})")
        time.sleep(poll)


def init_distributed():
    """``(rank, world, device)`` of this process: under torchrun (``WORLD_SIZE`` > 1) the process group is
    joined (NCCL on GPUs, gloo on CPUs) and the device is GPU ``LOCAL_RANK``; otherwise ``(0, 1, cuda:0 or cpu)``."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def torchrun_entry(train) -> None:
    """The ``__main__`` of a module :func:`launch` runs under torchrun: ``train(args)`` with the JSON
    arguments file named by ``argv[1]``, then the process group closed: after a barrier when ``train``
    returned (no process tears it down while another still writes its last file), at once when it raised
    (a barrier would wait forever for a process that is stuck in a collective; torchrun stops the rest).

    A process whose ``train`` returned then ends with status 0 without the interpreter's finalization.
    DeepSpeed and the Trainer keep process groups in module globals, so their gloo threads outlive
    ``destroy_process_group`` and are torn down while the interpreter shuts down, which now and then
    aborts the process (SIGABRT, "terminate called without an active exception": seen once in CI, on a
    ZeRO-3 stage that had saved its model). Snakemake would then count a finished training as failed and delete
    its outputs. Everything ``train`` wrote is closed by then; the standard streams and logging are flushed."""
    import json
    import logging
    import sys

    import torch.distributed as dist

    try:
        train(json.loads(Path(sys.argv[1]).read_text()))
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(module: str, args: dict, gpus: int, args_path: str | Path, log, in_process=None) -> Claim:
    """Run a training program on the devices of this job: every multi-GPU rule launches this way.

    Claims ``gpus`` devices (see :func:`claim_devices`). With more than one, ``args`` is written to
    ``args_path`` (JSON) and ``torchrun --standalone --nproc_per_node=<n> -m <module> <args_path>``
    runs one process per device (``module`` reads its arguments from that file); its output goes to
    ``log``. With one device or none, ``in_process(args, log=log)`` runs here, or the same torchrun
    command with one process when ``in_process`` is None."""
    import json
    import shutil
    import subprocess
    import sys

    claim = claim_devices(gpus)
    print(f"devices: {claim.ids or 'cpu'} ({claim.source})", file=log, flush=True)
    n = max(1, len(claim.ids))
    if n == 1 and in_process is not None:
        in_process(args, log=log)
        return claim
    args_path = Path(args_path)
    args_path.parent.mkdir(parents=True, exist_ok=True)
    args_path.write_text(json.dumps(args, indent=1))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", f"--nproc_per_node={n}", "-m", module, str(args_path)]
    print(" ".join(cmd), file=log, flush=True)
    # the job's threads (Snakemake's OMP_NUM_THREADS, else the machine's cores) shared by the n processes:
    # n processes on a shared node must not oversubscribe it
    total = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, total // n))}
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} under torchrun ({n} processes) exited with code {proc.returncode}; its output is above in this log")
    return claim
