"""Split a dataset's urls.parquet into its configured number of contiguous chunks."""

from sailflow.data.urls import split_table
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    counts = split_table(smk.input[0], list(smk.output))
    print(f"{len(counts)} chunks, rows per chunk: {counts}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
