"""Draw a grid of retrieval examples (images and their top retrieved captions) for the report."""

from sailflow.io import read_json
from sailflow.logs import log_to
from sailflow.report import retrieval_grid


def main(smk):
    log_to(smk.log[0])
    retrieval_grid(read_json(smk.input[0]), smk.output[0], f"{smk.wildcards.run} / {smk.wildcards.task}: top-3 retrieved captions")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
