"""Draw a zero-shot task's confusion matrix for the report."""

from sailflow.logs import log_to
from sailflow.report import plot_confusion, read_task_result


def main(smk):
    log_to(smk.log[0])
    result = read_task_result(smk.input[0], "confusion")
    acc1 = result["metrics"]["acc1"]
    plot_confusion(result["confusion"], smk.output[0], f"{smk.wildcards.run} / {smk.wildcards.task}: top-1 predictions (acc1 {acc1:.4f})")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
