# LLaVA evaluation: each benchmark's answers (greedy generation on the run's finetune stage, LLaVA's
# answers JSONL), their score with the official metric (plus upload files for the evaluation servers);
# VQAScore tasks scored straight from the model (a GPU job); all merged into results/{run}/llava_eval.json.


rule llava_demo_eval_sets:
    input:
        heldout_meta="results/demo/shapes/eval.meta.parquet",
        train_meta="results/demo/shapes/train.meta.parquet",
    output:
        images=directory(f"{paths.llava_demo_evalsets()}/images"),
        vqa_questions=f"{paths.llava_demo_evalsets()}/vqa/questions.jsonl",
        vqa_annotations=f"{paths.llava_demo_evalsets()}/vqa/annotations.json",
        pope_questions=f"{paths.llava_demo_evalsets()}/pope/llava_pope_test.jsonl",
        pope_annotations=directory(f"{paths.llava_demo_evalsets()}/pope/coco"),
        mc=f"{paths.llava_demo_evalsets()}/mc/mmbench_dev.tsv",
    log:
        "logs/demo/llava_evalsets.log",
    localrule: True  # writes a few hundred lines and base64 images: seconds
    conda:
        "../../envs/sailflow.yaml"
    params:
        n=config["demo"]["llava_eval_sets"],
        seed=config["demo"]["seed"],
    script:
        "../scripts/llava_demo_eval_sets.py"


rule llava_answers:
    input:
        model=llava_model_inputs,
        data=llava_generation_files,
    output:
        paths.llava_answers("{run}", "{llava_task}"),
    log:
        "logs/{run}/llava_eval/{llava_task}.answers.log",
    benchmark:
        "logs/benchmark/{run}/llava_eval/{llava_task}.answers.tsv"
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=config["llava_eval"]["gpus"],
        batch_size=config["llava_eval"]["batch_size"],  # a resource: the answers are the same for any value
    params:
        spec=llava_generation_spec,  # what answering reads: a scoring option reruns only llava_score
    script:
        "../scripts/llava_answers.py"


rule llava_score:
    input:
        answers=paths.llava_answers("{run}", "{llava_task}"),
        data=llava_eval_files,
    output:
        result=paths.llava_eval_result("{run}", "{llava_task}"),
        files=directory(paths.llava_eval_files("{run}", "{llava_task}")),
    log:
        "logs/{run}/llava_eval/{llava_task}.log",
    wildcard_constraints:
        llava_task=GENERATED_TASKS,
    conda:
        "../../envs/sailflow.yaml"
    params:
        spec=llava_eval_spec,
    script:
        "../scripts/llava_score.py"


rule llava_vqascore:
    input:
        model=llava_model_inputs,
        data=llava_eval_files,
    output:
        result=paths.llava_eval_result("{run}", "{llava_task}"),
        files=directory(paths.llava_eval_files("{run}", "{llava_task}")),
    log:
        "logs/{run}/llava_eval/{llava_task}.log",
    benchmark:
        "logs/benchmark/{run}/llava_eval/{llava_task}.tsv"
    wildcard_constraints:
        llava_task=VQASCORE_TASKS,
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=min(1, config["llava_eval"]["gpus"]),
        batch_size=config["llava_eval"]["vqascore_batch_size"],  # a resource: the scores are the same for any value
    params:
        spec=llava_eval_spec,
        eval_tasks=llava_eval_refs,
    script:
        "../scripts/llava_score.py"


rule llava_eval_summary:
    input:
        tasks=llava_eval_results,
        model=llava_model_inputs,
    output:
        paths.llava_eval_summary("{run}"),
    log:
        "logs/{run}/llava_eval_summary.log",
    localrule: True  # merges small JSON files
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/llava_eval_summary.py"
