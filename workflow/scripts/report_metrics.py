"""Tabulate every metric of every run listed under `report: runs:`."""

from pathlib import Path

from sailflow.io import read_json
from sailflow.logs import log_to
from sailflow.report import metrics_html


def main(smk):
    log_to(smk.log[0])
    metrics_html({Path(p).parent.name: read_json(p) for p in smk.input}, smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
