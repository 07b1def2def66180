"""Encode one chunk's captions (one caption source) with a frozen text backbone."""

from sailflow.backbones import load_text
from sailflow.encode import chunk_meta, encode_texts
from sailflow.gpu import claim_devices
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    claim = claim_devices(1)
    name, spec = smk.wildcards.text, smk.params.backbone
    print(f"device: {claim.device} ({claim.source}); backbone {name}: {spec}")
    backbone = load_text(name, spec, claim.device)
    n = encode_texts(
        smk.input.samples,
        smk.wildcards.caption_source,
        smk.output[0],
        backbone,
        meta=chunk_meta(backbone, smk.wildcards.dataset, smk.wildcards.chunk),
        batch_size=smk.resources.batch_size,
        store_dtype=smk.params.dtype,
        device=claim.device,
        log=log,
    )
    print(f"encoded {n} captions")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
