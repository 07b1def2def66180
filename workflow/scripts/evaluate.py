"""Score one run on one evaluation task: the run's head over the task's stored backbone features."""

from pathlib import Path

from sailflow.align.heads import AlignmentHead
from sailflow.evaluate import tasks
from sailflow.evaluate.features import HeadOverFeatures, load_features
from sailflow.gpu import claim_devices
from sailflow.io import read_json, write_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    claim = claim_devices(1)  # the head over 50k ImageNet images / 80k prompts is quicker on a GPU
    task, run, spec, settings = smk.wildcards.task, smk.wildcards.run, smk.params.task, smk.params.settings
    kind = tasks.check_task(spec, task)
    data = tasks.load(spec, task)
    images, texts = tasks.images_of(spec, data, task), tasks.texts_of(spec, data, task)
    model = HeadOverFeatures(AlignmentHead.load(Path(smk.input.head).parent), images, load_features(smk.input.image, images),
                             texts, load_features(smk.input.text, texts), device=claim.device)
    result = tasks.run(model, spec, data, task, settings)
    align = read_json(smk.input.config)
    # CLIP_benchmark's result layout (dataset, model, pretrained, task, metrics, language), plus ours.
    write_json(smk.output[0], {
        "dataset": task, "model": run, "pretrained": smk.input.head, "task": kind.result_task,
        "metrics": result["metrics"], "language": "en",
        "kind": spec["kind"], "counts": result["counts"], "chance": result["chance"], "tie_rule": kind.tie_rule,
        "vision": align["vision"], "text": align["text"], "spec": spec,
        **{k: v for k, v in result.items() if k not in ("metrics", "counts", "chance")},  # examples etc. for the report
    })
    print(f"{run} / {task}: {result['metrics']}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
