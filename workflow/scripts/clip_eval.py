"""Score a clip run's CLIP (results/{run}/clip/) on its evaluation tasks: results/{run}/clip_eval.json."""

from pathlib import Path

import torch

from sailflow.clip_pretrain import ClipModel, read_manifest
from sailflow.evaluate import tasks
from sailflow.gpu import claim_devices
from sailflow.io import write_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    torch.set_num_threads(max(1, int(smk.threads)))
    run, folder = smk.wildcards.run, Path(smk.input.manifest).parent
    claim = claim_devices(1)  # ImageNet's 50k images through a ViT: a GPU when there is one
    model = ClipModel(folder, name=run, device=claim.device)
    manifest = read_manifest(folder)
    results, metrics, chance = {}, {}, {}
    for task, t in smk.params.tasks.items():
        kind = tasks.check_task(t["spec"], task)
        r = tasks.run(model, t["spec"], None, task, t["settings"])
        # CLIP_benchmark's per-task layout, as the evaluate rule writes it (plus what the kind adds, e.g. confusion)
        results[task] = {"dataset": task, "model": run, "task": kind.result_task, "kind": t["spec"]["kind"], "metrics": r["metrics"],
                         "chance": r["chance"], "counts": r["counts"], "tie_rule": kind.tie_rule,
                         **{k: v for k, v in r.items() if k not in ("metrics", "counts", "chance")}}
        for k, v in r["metrics"].items():
            metrics[f"{task}/{k}"], chance[f"{task}/{k}"] = v, r["chance"].get(k)
        print(f"{run} / {task}: {r['metrics']} (chance {r['chance']})", flush=True)
    write_json(smk.output[0], {
        "run": run, "clip": str(folder), "fingerprint": manifest["fingerprint"], "steps": manifest["steps"],
        "samples": manifest["samples"], "caption_source": manifest["caption_source"], "final_loss": manifest.get("final_loss"),
        "metrics": metrics, "chance": chance, "tasks": results,
    })


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
