"""Merge a LLaVA run's benchmark results into results/{run}/llava_eval.json."""

from pathlib import Path

from sailflow.evaluate.summary import git_commit
from sailflow.io import read_json, write_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    import datetime

    results = {Path(p).stem: read_json(p) for p in smk.input.tasks}
    stage = read_json(smk.input.model[0])
    summary = {
        "run": smk.wildcards.run,
        "fingerprint": stage["fingerprint"],  # the scored stage's (its settings, data and the stage before it)
        "stage": smk.input.model[0],
        "git": git_commit(Path(smk.scriptdir)),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "llava": {"tower": stage["tower"].get("name") or stage["tower"]["kind"], "llm": stage["llm"].get("name"),
                  "connector": stage["connector"]["kind"], "template": stage["template"], "steps": stage.get("steps"),
                  "samples": stage.get("samples")},
        "metrics": {f"{t}/{k}": v for t, r in results.items() for k, v in r["metrics"].items()},
        "tasks": {t: {"kind": r["kind"], "spec": r["spec"], "metrics": r["metrics"], "chance": r.get("chance", {}),
                      "counts": r.get("counts", {})} for t, r in results.items()},
    }
    write_json(smk.output[0], summary)
    for name, value in summary["metrics"].items():
        print(f"{name:50s} {value}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
