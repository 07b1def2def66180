"""Train a run's alignment head: in this process on one device, or under torchrun on several."""

from pathlib import Path

from sailflow.align.train import train
from sailflow.gpu import launch
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
    launch("sailflow.align.train", args, int(smk.resources.gpu), out_dir / "train_args.json", log, in_process=train)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
