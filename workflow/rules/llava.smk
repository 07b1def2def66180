# LLaVA-style training: stage 1 (pretrain: the connector between a frozen tower and a frozen LLM), stage 2
# (finetune: instruction tuning), the transformers export; and the demo's tiny LLM and instruction set.


rule build_tiny_llm:
    input:
        texts=lambda w: tiny_llm_texts(w.llm),
    output:
        directory(paths.tiny_model("{llm}")),
    log:
        "logs/models/{llm}.log",
    conda:
        "../../envs/sailflow.yaml"
    threads: 1  # tiny matrices: one thread is as fast, and stays fast beside other jobs
    params:
        kind=lambda w: LLMS[w.llm]["build"],
        steps=lambda w: config["demo"]["llm_pretrain_steps"] if LLMS[w.llm]["build"] == "demo_llama" else None,
    script:
        "../scripts/build_tiny_llm.py"


rule llava_demo_data:
    input:
        meta="results/demo/shapes/train.meta.parquet",
    output:
        paths.llava_demo_instructions(),
    log:
        "logs/demo/llava_instructions.log",
    conda:
        "../../envs/sailflow.yaml"
    params:
        seed=config["demo"]["seed"],
        vqascore=config["demo"]["llava_vqascore_turns"],
    script:
        "../scripts/llava_demo_data.py"


rule ocr:
    input:
        records=lambda w: OCR_SETS[w.name]["json"],
    output:
        paths.ocr_set("{name}"),
    log:
        "logs/ocr/{name}.log",
    benchmark:
        "logs/benchmark/ocr/{name}.tsv"
    wildcard_constraints:
        name="|".join(map(re.escape, OCR_SETS)) or "(?!)",
    conda:
        "../../envs/sailflow.yaml"
    threads: lambda w: OCR_SETS[w.name]["threads"]
    params:
        images=lambda w: OCR_SETS[w.name]["images"],
        # what decides the regions (not the thread count)
        settings=lambda w: without(OCR_SETS[w.name], {"json", "images", "threads"}),
    script:
        "../scripts/ocr.py"


rule llava_pretrain:
    input:
        unpack(llava_inputs("pretrain")),
    output:
        manifest=paths.llava_manifest("{run}", "pretrain"),
        connector=paths.llava_connector("{run}", "pretrain"),
    log:
        "logs/{run}/llava_pretrain.log",
    benchmark:
        "logs/benchmark/{run}/llava_pretrain.tsv"
    conda:
        "../../envs/sailflow.yaml"
    threads: llava_threads  # without a GPU the training computes on them
    resources:
        gpu=llava_gpus,
        # intervals only (not results): resources, so that changing them reruns nothing
        checkpoint_every=llava_runtime("checkpoint_every"),
        log_every=llava_runtime("log_every"),
        dataloader_workers=llava_workers("pretrain"),
    params:
        args=llava_args("pretrain"),
    script:
        "../scripts/llava_stage.py"


rule llava_finetune:
    input:
        unpack(llava_inputs("finetune")),
    output:
        manifest=paths.llava_manifest("{run}", "finetune"),
        connector=paths.llava_connector("{run}", "finetune"),
    log:
        "logs/{run}/llava_finetune.log",
    benchmark:
        "logs/benchmark/{run}/llava_finetune.tsv"
    conda:
        "../../envs/sailflow.yaml"
    threads: llava_threads  # without a GPU the training computes on them
    resources:
        gpu=llava_gpus,
        checkpoint_every=llava_runtime("checkpoint_every"),
        log_every=llava_runtime("log_every"),
        dataloader_workers=llava_workers("finetune"),
    params:
        args=llava_args("finetune"),
    script:
        "../scripts/llava_stage.py"


rule llava_export:
    input:
        paths.llava_manifest("{run}", "finetune"),
    output:
        paths.llava_manifest("{run}", "hf"),
    log:
        "logs/{run}/llava_export.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/llava_export.py"
