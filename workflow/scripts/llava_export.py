"""Export a finished LLaVA run to transformers' LlavaForConditionalGeneration (checked by a greedy probe)."""

from pathlib import Path

from sailflow.llava.export import export_hf
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    export_hf(Path(smk.input[0]).parent, Path(smk.output[0]).parent, log=log)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
