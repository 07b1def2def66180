"""Train one LLaVA stage of a run: in this process, or under torchrun on several GPUs."""

from pathlib import Path

from sailflow.gpu import launch
from sailflow.llava.train import train_stage
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    out_dir = Path(smk.output.manifest).parent
    args = {**smk.params.args, "out_dir": str(out_dir), "checkpoint_every": int(smk.resources.checkpoint_every),
            "log_every": int(smk.resources.log_every), "dataloader_workers": int(smk.resources.dataloader_workers),
            "meta": {"run": smk.wildcards.run}}
    launch("sailflow.llava.train", args, int(smk.resources.gpu), out_dir / "train_args.json", log, in_process=train_stage)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
