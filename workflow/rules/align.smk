# Alignment tuning: a SAIL head over the frozen embeddings of a run's datasets.


rule align:
    input:
        unpack(run_inputs),
    output:
        head=paths.align_head("{run}"),
        config=paths.align_config("{run}"),
    log:
        "logs/{run}/align.log",
    benchmark:
        "logs/benchmark/{run}/align.tsv"
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=run_gpus,
        # intervals only (not results): resources, so that changing them reruns nothing
        log_every=align_runtime("log_every"),
        checkpoint_every=align_runtime("checkpoint_every"),
    params:
        settings=align_settings,
        meta=run_meta,
    script:
        "../scripts/align.py"


rule probe:
    input:
        unpack(probe_inputs),
    output:
        paths.probe("{dataset}", "{vision}", "{text}"),
    log:
        "logs/probe/{dataset}/{vision}__{text}.log",
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=1,
        log_every=10,
        checkpoint_every=1000,
    params:
        settings=probe_settings,
        meta=probe_meta,
    script:
        "../scripts/probe.py"
