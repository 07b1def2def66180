# The embedded demo dataset: generated locally, then "downloaded" through img2dataset from
# file:// URLs like any web dataset.

# `demo:` keys that only the LLaVA rules read (the demo LLM's pre-training, its instruction set and
# benchmark sets): changing one reruns llava_demo, not the shapes or the SAIL evaluation.
DEMO_LLAVA_KEYS = ("llm_pretrain_steps", "llava_eval_sets", "llava_vqascore_turns")


rule demo_shapes:
    output:
        train="results/demo/shapes/train.csv",
        heldout="results/demo/shapes/eval.csv",
        heldout_meta="results/demo/shapes/eval.meta.parquet",
        train_meta="results/demo/shapes/train.meta.parquet",
    log:
        "logs/demo/shapes.log",
    localrule: True  # draws the demo's small images: under a minute
    conda:
        "../../envs/sailflow.yaml"
    params:
        cfg={k: v for k, v in config["demo"].items() if k not in ("eval_sets", *DEMO_LLAVA_KEYS)},
    script:
        "../scripts/demo_shapes.py"


rule demo_eval_sets:
    input:
        heldout="results/demo/shapes/eval.csv",
        meta="results/demo/shapes/eval.meta.parquet",
    output:
        shape=directory("results/demo/evalsets/shape"),
        colour=directory("results/demo/evalsets/colour"),
        retrieval_annotations="results/demo/evalsets/retrieval/captions.json",
        retrieval_images=directory("results/demo/evalsets/retrieval/images"),
        winoground_examples="results/demo/evalsets/winoground/examples.jsonl",
        winoground_images=directory("results/demo/evalsets/winoground/images"),
        mmvp_questions="results/demo/evalsets/mmvp/Questions.csv",
        mmvp_images=directory("results/demo/evalsets/mmvp/MLLM_VLM Images"),
    log:
        "logs/demo/evalsets.log",
    localrule: True  # draws the demo's few hundred evaluation images: seconds
    conda:
        "../../envs/sailflow.yaml"
    params:
        cfg={k: v for k, v in config["demo"].items() if k not in DEMO_LLAVA_KEYS},
    script:
        "../scripts/demo_eval_sets.py"
