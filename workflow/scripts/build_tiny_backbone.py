"""Build a tiny random-weight backbone and save it like a published one."""

from sailflow.backbones.tiny import build_tiny
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    path = build_tiny(smk.params.kind, smk.output[0])
    print(f"built tiny {smk.params.kind} backbone in {path}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
