"""The demo's stage-2 instruction set, generated from the shapes' ground truth; each record with an image also
carries its OCR region (the shape's name at its box: what REMGCL's local term reads; other runs ignore it)."""

from pathlib import Path

import pandas as pd

from sailflow.demo.instructions import make_instructions
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    meta = pd.read_parquet(smk.input.meta)
    root = Path(smk.input.meta).parent
    n = make_instructions(meta, root, smk.output[0], seed=int(smk.params.seed), ocr=True,
                          vqascore=float(smk.params.vqascore))
    print(f"wrote {n} instruction records for {len(meta)} images")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
