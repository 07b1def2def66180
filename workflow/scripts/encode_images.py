"""Encode one chunk's images with a frozen vision backbone."""

from pathlib import Path

from sailflow.backbones import load_vision
from sailflow.encode import chunk_meta, encode_images
from sailflow.gpu import claim_devices
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    claim = claim_devices(1)  # held until this process exits
    name, spec = smk.wildcards.vision, smk.params.backbone
    print(f"device: {claim.device} ({claim.source}); backbone {name}: {spec}")
    backbone = load_vision(name, spec, claim.device)
    n = encode_images(
        smk.input.samples,
        Path(smk.input.samples).parent / "images",
        smk.output[0],
        backbone,
        meta=chunk_meta(backbone, smk.wildcards.dataset, smk.wildcards.chunk),
        batch_size=smk.resources.batch_size,
        workers=smk.threads,
        store_dtype=smk.params.dtype,
        device=claim.device,
        log=log,
    )
    print(f"encoded {n} images")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
