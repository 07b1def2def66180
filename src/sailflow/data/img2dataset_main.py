"""Run img2dataset in its own process: ``python -m sailflow.data.img2dataset_main ARGS.json``.

Why a separate module: img2dataset's worker pool uses the ``spawn`` start method, which re-imports
the main module in every worker; launched from a Snakemake ``script:`` it hangs (the preamble that
defines ``snakemake`` is not re-run). Here the main module is this importable file.

Every process that imports this module (the launcher and each spawned worker, which imports it as
``__mp_main__``) exits as soon as its parent is gone. A killed download job therefore leaves no
orphaned worker that keeps writing shards while a rerun resumes the same chunk. (A polling thread,
not the kernel's PR_SET_PDEATHSIG: that fires when the *thread* that started a process exits, and
multiprocessing starts replacement workers from helper threads; measured here, it killed workers
mid-run and hung img2dataset.)
"""

import os
import threading
import time


def _exit_when_orphaned(interval: float = 0.5) -> None:
    parent = os.getppid()

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()


_exit_when_orphaned()

if __name__ == "__main__":
    import json
    import sys

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    with open(sys.argv[1]) as f:
        download(**json.load(f))
