"""Write a run's landing-page summary (metrics with chance, held-out R@1, data funnel, hyper-parameters)."""

from sailflow.io import read_json
from sailflow.logs import log_to
from sailflow.report import summary_html


def main(smk):
    log_to(smk.log[0])
    summary_html(smk.wildcards.run, read_json(smk.input.summary), [read_json(p) for p in smk.input.manifests], smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
