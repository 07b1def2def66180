"""Draw a retrieval task's examples (images with their top captions) and worst misses for the report."""

from sailflow.logs import log_to
from sailflow.report import read_task_result, retrieval_grid, retrieval_misses


def main(smk):
    log_to(smk.log[0])
    result = read_task_result(smk.input[0], "misses")
    name = f"{smk.wildcards.run} / {smk.wildcards.task}"
    retrieval_grid(result, smk.output.examples, f"{name}: top-3 retrieved captions of evenly spaced images")
    retrieval_misses(result, smk.output.misses, f"{name}: captions whose own image ranked worst, and what was retrieved instead")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
