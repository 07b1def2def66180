"""Tabulate the data manifests of a run's datasets for the report."""

from sailflow.io import read_json
from sailflow.logs import log_to
from sailflow.report import data_html


def main(smk):
    log_to(smk.log[0])
    data_html([read_json(p) for p in smk.input], smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
