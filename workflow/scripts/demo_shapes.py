"""Generate the demo shapes dataset (train and held-out splits) as DreamLIP-style CSVs."""

from pathlib import Path

from sailflow.demo.shapes import make_split
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    cfg = smk.params.cfg
    out = Path(smk.output.train).parent
    common = dict(side=cfg["image_side"], missing_raw=cfg["missing_raw_caption"])
    make_split(out, "train", cfg["n_train"], seed=cfg["seed"], **common)
    # A different seed: held-out images are new draws, never copies of training images.
    make_split(out, "eval", cfg["n_eval"], seed=cfg["seed"] + 1_000_003, **common)
    print(f"wrote {cfg['n_train']} train and {cfg['n_eval']} held-out images under {out}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
