# CLIP from scratch (miniVLM's first stage): an open_clip CLIP trained on the image-caption pairs of
# downloaded datasets, saved as an open_clip `local-dir:` model (results/{run}/clip/), then scored on the
# run's contrastive evaluation tasks (results/{run}/clip_eval.json). A backbone whose path is
# "local-dir:results/{run}/clip" uses it (a LLaVA tower, as miniVLM's); its jobs wait for the manifest.


rule clip_pretrain:
    input:
        unpack(clip_inputs),
    output:
        manifest=paths.clip_manifest("{run}"),
        model=paths.clip_model("{run}"),
        config=paths.clip_config("{run}"),
    log:
        "logs/{run}/clip.log",
    benchmark:
        "logs/benchmark/{run}/clip.tsv"
    wildcard_constraints:
        run=CLIP_RUN_NAMES,
    conda:
        "../../envs/sailflow.yaml"
    threads: clip_threads  # one per training process, the rest decode images
    resources:
        gpu=clip_gpus,
        # intervals only (not results): resources, so that changing them reruns nothing
        log_every=clip_runtime("log_every"),
        checkpoint_every=clip_runtime("checkpoint_every"),
    params:
        settings=clip_settings,
        meta=clip_meta,
    script:
        "../scripts/clip_pretrain.py"


rule clip_eval:
    input:
        manifest=paths.clip_manifest("{run}"),
        model=paths.clip_model("{run}"),
        data=clip_eval_data,
    output:
        paths.clip_eval("{run}"),
    log:
        "logs/{run}/clip_eval.log",
    benchmark:
        "logs/benchmark/{run}/clip_eval.tsv"
    wildcard_constraints:
        run=CLIP_RUN_NAMES,
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=1,
    params:
        tasks=clip_eval_tasks,
    script:
        "../scripts/clip_eval.py"
