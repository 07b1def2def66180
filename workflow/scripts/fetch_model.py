"""Download a hub backbone (at its pinned revision) into the model cache; record what was fetched."""

from sailflow.backbones.hub import ModelNotCached, fetch, use_model_cache  # imports huggingface_hub lazily
from sailflow.io import write_json
from sailflow.logs import log_to

use_model_cache(None, offline=False)  # the one job that goes online (before huggingface_hub is imported)


def main(smk):
    log_to(smk.log[0])
    name = smk.wildcards.model
    try:
        record = fetch(name, smk.params.backbone)
    except ModelNotCached as e:
        raise SystemExit(str(e)) from None
    write_json(smk.output[0], record)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
