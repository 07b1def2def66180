"""Plot a run's training curves (loss, learning rate, logit scale and bias) for the report."""

from pathlib import Path

from sailflow.logs import log_to
from sailflow.report import plot_training


def main(smk):
    log_to(smk.log[0])
    plot_training(Path(smk.input[0]).parent / "train_log.jsonl", smk.output[0], f"{smk.wildcards.run}: alignment training")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
