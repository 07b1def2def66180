# Evaluation: backbone features of each evaluation set (once per task and backbone, shared by all
# runs), then each run's head over them: one JSON per (run, task), merged into results/{run}/eval.json.


rule eval_image_features:
    input:
        data=eval_data_inputs,
        model=backbone_model_input("vision"),
    output:
        paths.eval_image_features("{task}", "{vision}"),
    log:
        "logs/eval/{task}/image/{vision}.log",
    benchmark:
        "logs/benchmark/eval/{task}/image/{vision}.tsv"
    conda:
        "../../envs/sailflow.yaml"
    threads: config["encode"]["workers"]
    resources:
        gpu=1,
        batch_size=encode_batch_size("vision"),
    params:
        task=eval_task_image_spec,
        backbone=backbone_spec("vision"),
        dtype=config["encode"]["dtype"],
    script:
        "../scripts/eval_features.py"


rule eval_text_features:
    input:
        data=eval_data_inputs,
        model=backbone_model_input("text"),
    output:
        paths.eval_text_features("{task}", "{text}"),
    log:
        "logs/eval/{task}/text/{text}.log",
    benchmark:
        "logs/benchmark/eval/{task}/text/{text}.tsv"
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=1,
        batch_size=encode_batch_size("text"),
    params:
        task=eval_task_spec,
        backbone=backbone_spec("text"),
        dtype=config["encode"]["dtype"],
    script:
        "../scripts/eval_features.py"


rule evaluate:
    input:
        unpack(eval_features),
        head=paths.align_head("{run}"),
        config=paths.align_config("{run}"),
        data=eval_data_inputs,
    output:
        paths.eval_result("{run}", "{task}"),
    log:
        "logs/{run}/eval/{task}.log",
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=1,
    params:
        task=eval_task_spec,
        settings=eval_settings,
    script:
        "../scripts/evaluate.py"


rule eval_summary:
    input:
        tasks=run_eval_results,
        align=paths.align_config("{run}"),
        manifests=run_manifests,
    output:
        paths.eval_summary("{run}"),
    log:
        "logs/{run}/eval_summary.log",
    localrule: True  # merges small JSON files
    conda:
        "../../envs/sailflow.yaml"
    params:
        fingerprint=run_fingerprint,
    script:
        "../scripts/eval_summary.py"
