# Alignment tuning: a SAIL head over the frozen embeddings of a run's datasets.


rule align:
    input:
        unpack(run_inputs),
    output:
        head="results/{run}/align/head.safetensors",
        config="results/{run}/align/config.json",
    params:
        settings=align_settings,
        runtime=align_runtime,
        meta=run_meta,
    resources:
        gpu=run_gpus,
    log:
        "logs/{run}/align.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/align.py"
