"""Write the demo's evaluation sets (class folders, COCO-format retrieval, Winoground, MMVP-VLM)."""

from pathlib import Path

from sailflow.demo.evalsets import make_eval_sets
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    cfg, out = smk.params.cfg, smk.output
    make_eval_sets(
        smk.input.heldout,
        {"shape": out.shape, "colour": out.colour, "retrieval_annotations": out.retrieval_annotations,
         "retrieval_images": out.retrieval_images, "winoground": Path(out.winoground_examples).parent,
         "mmvp": Path(out.mmvp_questions).parent},
        side=cfg["image_side"], seed=cfg["seed"], **cfg["eval_sets"],
    )
    print(f"demo evaluation sets written under {Path(out.shape).parent}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
