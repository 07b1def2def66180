"""Write every chunk's samples.parquet and the dataset's manifest.json."""

import json

from sailflow.data.cleanup import cleanup_dataset
from sailflow.io import read_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    manifest = cleanup_dataset(
        dataset=smk.params.dataset,
        caption_sources=smk.params.caption_sources,
        normalize_report=read_json(smk.input.report),
        chunks=smk.params.chunks,
        chunk_urls=smk.input.urls,
        downloads=smk.input.downloads,
        filtered=smk.input.filtered,
        filter_reports=smk.input.filter_reports,
        out_samples=smk.output.samples,
        out_manifest=smk.output.manifest,
    )
    print(json.dumps({k: manifest[k] for k in ("input_rows", "urls", "downloaded", "kept", "dropped")}, indent=2))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
