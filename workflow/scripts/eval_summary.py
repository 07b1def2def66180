"""Merge a run's per-task evaluation files into results/{run}/eval.json."""

from pathlib import Path

from sailflow.evaluate.summary import summarize
from sailflow.io import read_json, write_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    results = {Path(p).stem: read_json(p) for p in smk.input.tasks}
    summary = summarize(smk.wildcards.run, results, read_json(smk.input.align), [read_json(p) for p in smk.input.manifests],
                        smk.params.fingerprint, code_dir=Path(smk.scriptdir))
    write_json(smk.output[0], summary)
    for name, value in summary["metrics"].items():
        print(f"{name:50s} {value}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
