"""OCR regions for an ocr_sets entry's LLaVA records (Tesseract, one process per image, `threads` at a time):
results/ocr/{name}.json, the same records with an `ocr` field on every record with an image."""

import json

from tqdm import tqdm

from sailflow.io import write_json
from sailflow.llava.ocr import OcrError, add_ocr_regions
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    source = str(smk.input.records)
    try:
        records = json.loads(open(source, encoding="utf-8").read())
    except json.JSONDecodeError as e:
        raise OcrError(f"{source}: not JSON ({e})") from None
    if not isinstance(records, list):
        raise OcrError(f"{source}: a LLaVA record file is a JSON list, this is a {type(records).__name__}")
    n_images = len({r.get("image") for r in records if isinstance(r, dict) and r.get("image")})
    with tqdm(total=n_images, desc=f"ocr {smk.wildcards.name}", file=log, mininterval=10) as bar:
        out, counts, failures = add_ocr_regions(records, smk.params.images, source, dict(smk.params.settings),
                                                threads=int(smk.threads), progress=bar)
    print(f"[ocr] {smk.wildcards.name}: {json.dumps(counts, sort_keys=True)}", file=log, flush=True)
    for f in failures:
        print(f"[ocr] failed: {f}", file=log, flush=True)
    write_json(smk.output[0], out)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
