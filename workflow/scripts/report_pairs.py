"""Draw Winoground or MMVP example pairs with their 2x2 scores for the report."""

from sailflow.logs import log_to
from sailflow.report import pair_grid, read_task_result

OUTCOMES = {"winoground": (("text", "image", "group"), "caption"), "mmvp": (("correct",), "statement")}


def main(smk):
    log_to(smk.log[0])
    outcomes, label = OUTCOMES[smk.params.kind]
    title = f"{smk.wildcards.run} / {smk.wildcards.task}: example pairs (scores: cosine similarity)"
    pair_grid(read_task_result(smk.input[0], "examples"), smk.output[0], title, outcomes, label)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
