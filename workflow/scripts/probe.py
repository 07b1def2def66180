"""Alignment probing: train a linear head on one (dataset, vision, text) and score held-out pairs."""

import tempfile

from sailflow.align.train import train
from sailflow.gpu import claim_devices
from sailflow.io import write_json
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    claim = claim_devices(1)
    settings = {**smk.params.settings, "log_every": smk.resources.log_every, "checkpoint_every": smk.resources.checkpoint_every}
    if not settings.get("holdout"):
        raise ValueError("probe.align.holdout must be > 0: the probe score is measured on held-out pairs")
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:  # the probe's head itself is not kept
        result = train({"image": list(smk.input.image), "text": list(smk.input.text), "samples": list(smk.input.samples),
                        "out_dir": tmp, "settings": settings, "meta": smk.params.meta}, log=log)
    h = result["holdout"]
    score = (h["image_to_text_r1"] + h["text_to_image_r1"]) / 2
    write_json(smk.output[0], {**smk.params.meta, "score": score, **h, "train_pairs": result["pairs"], "steps": result["steps"],
                               "settings": settings, "device": claim.device})
    print(f"probe score (mean held-out R@1) {score:.4f}, chance {h['chance']:.4f}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
