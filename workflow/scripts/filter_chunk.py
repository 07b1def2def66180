"""Decode and check every downloaded image of one chunk."""

from pathlib import Path

from sailflow.data.filter import filter_chunk
from sailflow.data.images import ImageLimits
from sailflow.io import read_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    download = read_json(smk.input[0])
    report = filter_chunk(
        download,
        Path(smk.input[0]).parent / "images",
        smk.output.filtered,
        smk.output.report,
        limits=ImageLimits(**smk.params.limits),
        processes=smk.threads,
    )
    print(f"kept {report['kept']} of {report['images']}; dropped: {report['dropped']}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
