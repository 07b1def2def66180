"""Plot a LLaVA run's two training stages (loss, learning rate, gradient norm) for the report."""

from pathlib import Path

from sailflow.logs import log_to
from sailflow.report import plot_llava_training


def main(smk):
    log_to(smk.log[0])
    logs = {stage: Path(getattr(smk.input, stage)).parent / "train_log.jsonl" for stage in ("pretrain", "finetune")}
    plot_llava_training(logs, smk.output[0], f"{smk.wildcards.run}: LLaVA training")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
