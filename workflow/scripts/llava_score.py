"""Score one benchmark of a LLaVA run: its answers with the benchmark's official metric and the files
its evaluation server takes (rule llava_score), or VQAScores from the model itself (rule llava_vqascore)."""

from pathlib import Path

from sailflow.io import write_json
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    spec, task, run = smk.params.spec, smk.wildcards.llava_task, smk.wildcards.run
    files = Path(smk.output.files)
    files.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "vqascore":
        from tqdm import tqdm

        from sailflow.gpu import claim_devices
        from sailflow.llava.generate import VisionLanguageModel
        from sailflow.llava.vqascore import evaluate

        claim = claim_devices(int(smk.resources.gpu))
        vlm = VisionLanguageModel.from_run(Path(smk.input.model[0]).parent, device=claim.device)
        with tqdm(desc="vqascore images", file=log, mininterval=30) as bar:
            result = evaluate(vlm, spec, smk.params.eval_tasks, batch_size=int(smk.resources.batch_size), progress=bar)
        if "scores" in result:
            write_json(files / "scores.json", result.pop("scores"))
    else:
        from sailflow.llava import benchmarks

        items = benchmarks.load_items(spec, task)
        result = benchmarks.score(spec, task, items, benchmarks.read_answers(smk.input.answers), files,
                                  answers_path=smk.input.answers)
        print(f"files for the official scorers / evaluation servers: {result['files']}", file=log)
    write_json(smk.output.result, {"task": task, "run": run, "kind": spec["kind"], "spec": spec, **result})
    for name, value in result["metrics"].items():
        print(f"{run} / {task} / {name}: {value}", file=log)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
