"""Train one LLaVA stage of a run: in this process, or under torchrun (several GPUs, or DeepSpeed)."""

from pathlib import Path

from sailflow.llava.train import launch_stage
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    out_dir = Path(smk.output.manifest).parent
    args = {**smk.params.args, "out_dir": str(out_dir), "checkpoint_every": int(smk.resources.checkpoint_every),
            "log_every": int(smk.resources.log_every), "dataloader_workers": int(smk.resources.dataloader_workers),
            "meta": {"run": smk.wildcards.run}}
    launch_stage(args, int(smk.resources.gpu), log)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
