"""Write the demo's LLaVA benchmark sets (VQAv2-, POPE- and MMBench-format) from held-out shapes."""

from pathlib import Path

from sailflow.demo.llava_evalsets import make_llava_eval_sets
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    out = smk.output
    make_llava_eval_sets(smk.input.heldout_meta, smk.input.train_meta, {"images": out.images, "vqa": Path(out.vqa_questions).parent,
                         "pope": Path(out.pope_questions).parent, "mc": out.mc}, smk.params.n, smk.params.seed)
    print(f"demo LLaVA benchmark sets written under {Path(out.images).parent}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
