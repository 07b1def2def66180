"""Run img2dataset in its own process: ``python -m sailflow.data.img2dataset_main ARGS.json``.

Why a separate module: img2dataset's worker pool uses the ``spawn`` start method, which re-imports
the main module in every worker; launched from a Snakemake ``script:`` it hangs (the preamble that
defines ``snakemake`` is not re-run). Here the main module is this importable file.

Every process that imports this module (the launcher and each spawned worker, which imports it as
``__mp_main__``) asks the kernel to kill it when its parent dies. A killed download job therefore
leaves no orphaned worker that keeps writing shards while a rerun resumes the same chunk.
"""

import os
import signal
import sys


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


_die_with_parent()

if __name__ == "__main__":
    import json

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    with open(sys.argv[1]) as f:
        download(**json.load(f))
