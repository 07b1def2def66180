"""Backbone features of one evaluation set: its images (vision backbone) or its texts (text backbone)."""

from sailflow.backbones import fingerprint, load_text, load_vision
from sailflow.data.shards import ImageFiles
from sailflow.encode import run_images, run_texts
from sailflow.evaluate import tasks
from sailflow.evaluate.features import save_features
from sailflow.gpu import claim_devices
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    claim = claim_devices(1)
    task, spec = smk.wildcards.task, smk.params.task
    data = tasks.load(spec, task)
    is_image = hasattr(smk.wildcards, "vision")
    name = smk.wildcards.vision if is_image else smk.wildcards.text
    keys = tasks.images_of(spec, data, task) if is_image else tasks.texts_of(spec, data, task)
    print(f"device: {claim.device} ({claim.source}); task {task}: {len(keys)} {'images' if is_image else 'texts'}; backbone {name}")
    common = dict(batch_size=smk.resources.batch_size, store_dtype=smk.params.dtype, device=claim.device, log=log)
    if is_image:
        backbone = load_vision(name, smk.params.backbone, claim.device)
        feats = run_images(ImageFiles(keys, backbone.preprocess), backbone, workers=smk.threads, desc=f"{task} images", **common)
    else:
        backbone = load_text(name, smk.params.backbone, claim.device)
        feats = run_texts(keys, backbone, desc=f"{task} texts", **common)
    save_features(smk.output[0], feats, keys, {"backbone": name, "fingerprint": fingerprint(name, backbone.spec), "task": task,
                                               "modality": "image" if is_image else "text"})
    print(f"wrote {tuple(feats.shape)} features")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
