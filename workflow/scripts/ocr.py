"""OCR regions for an ocr_sets entry's LLaVA records (Tesseract, one process per image, `threads` at a time):
results/ocr/{name}.json, the same records with an `ocr` field on every record with an image."""

import json

from tqdm import tqdm

from sailflow.io import write_json
from sailflow.llava.data import load_json_records
from sailflow.llava.ocr import add_ocr_regions
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    source = str(smk.input.records)
    records = [item for _, item in load_json_records(source)]  # a JSON array or JSONL, as the stages read it
    with tqdm(desc=f"ocr {smk.wildcards.name}", file=log, mininterval=10) as bar:
        out, counts, failures = add_ocr_regions(records, smk.params.images, source, dict(smk.params.settings),
                                                threads=int(smk.threads), progress=bar)
    print(f"[ocr] {smk.wildcards.name}: {json.dumps(counts, sort_keys=True)}", file=log, flush=True)
    for f in failures:
        print(f"[ocr] failed: {f}", file=log, flush=True)
    write_json(smk.output[0], out)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
