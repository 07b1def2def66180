"""Normalise a dataset's source table into urls.parquet (+ urls.json with the drop counts)."""

import json

from sailflow.data.urls import normalize_table
from sailflow.io import write_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    t = smk.params.table
    report = normalize_table(
        smk.input[0],
        smk.output.urls,
        dataset=smk.wildcards.dataset,
        url_column=t["url_column"],
        caption_sources=t["caption_sources"],
        fmt=t["format"],
        allow_local_urls=t["allow_local_urls"],
        on_bad_row=t["on_bad_row"],
    )
    write_json(smk.output.report, report.to_dict())
    print(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
