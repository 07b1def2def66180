"""Answer one benchmark's questions with a LLaVA run's finetune stage: LLaVA's answers JSONL."""

from pathlib import Path

from sailflow.gpu import claim_devices
from sailflow.llava import benchmarks
from sailflow.llava.answer import answer_file
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    spec, task, run = smk.params.spec, smk.wildcards.llava_task, smk.wildcards.run
    items = benchmarks.load_items(spec, task, check=False)  # the generation keys of an entry checked when planned
    claim = claim_devices(int(smk.resources.gpu))
    devices = [f"cuda:{i}" for i in range(len(claim.ids))] if claim.device.startswith("cuda") else ["cpu"]
    print(f"{run} / {task}: {len(items)} questions on {devices}; suffix {spec['suffix']!r}, max_new_tokens {spec['max_new_tokens']}",
          file=log, flush=True)
    n = answer_file(Path(smk.input.model[0]).parent, items, smk.output[0], suffix=spec["suffix"], max_new_tokens=spec["max_new_tokens"],
                    batch_size=int(smk.resources.batch_size), model_id=run, devices=devices, log=log)
    print(f"{n} answers written to {smk.output[0]}", file=log)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
