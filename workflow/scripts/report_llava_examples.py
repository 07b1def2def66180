"""Draw a LLaVA run's benchmark questions with the model's and the gold answers for the report."""

from pathlib import Path

from sailflow.io import read_json
from sailflow.logs import log_to
from sailflow.report import llava_examples_grid


def main(smk):
    log_to(smk.log[0])
    results = {Path(p).stem: read_json(p) for p in smk.input}
    llava_examples_grid(results, smk.output[0], f"{smk.wildcards.run}: benchmark questions, model answers and gold answers")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
