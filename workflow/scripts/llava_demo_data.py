"""The demo's stage-2 instruction set, generated from the shapes' ground truth."""

from pathlib import Path

import pandas as pd

from sailflow.demo.instructions import make_instructions
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    meta = pd.read_parquet(smk.input.meta)
    n = make_instructions(meta, Path(smk.input.meta).parent, smk.output[0], seed=int(smk.params.seed))
    print(f"wrote {n} instruction records for {len(meta)} images")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
