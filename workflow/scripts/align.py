"""Train a run's alignment head: in this process on one device, or under torchrun on several."""

import shutil
import subprocess
import sys
from pathlib import Path

from sailflow.align.train import train
from sailflow.gpu import claim_devices
from sailflow.io import write_json
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    out_dir = Path(smk.output.head).parent
    args = {
        "image": list(smk.input.image), "text": list(smk.input.text), "extra": list(smk.input.extra),
        "samples": list(smk.input.samples), "out_dir": str(out_dir),
        "settings": {**smk.params.settings, "log_every": smk.resources.log_every, "checkpoint_every": smk.resources.checkpoint_every},
        "meta": smk.params.meta,
    }
    gpus = int(smk.resources.gpu)
    claim = claim_devices(gpus)
    print(f"devices: {claim.ids or 'cpu'} ({claim.source})", flush=True)
    if len(claim.ids) > 1:
        args_path = out_dir / "train_args.json"
        write_json(args_path, args)
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--standalone", f"--nproc_per_node={len(claim.ids)}", "-m", "sailflow.align.train", str(args_path)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    else:
        train(args, log=log)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
