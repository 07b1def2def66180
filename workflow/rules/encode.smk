# Encoding with frozen backbones, done once before training: one job per (dataset, chunk, backbone[, caption
# source]); row k of each output is row k of the chunk's samples.parquet.


rule encode_images:
    input:
        samples=paths.chunk_file("{dataset}", "{chunk}", "samples.parquet"),
        model=backbone_model_input("vision"),
    output:
        paths.image_embeddings("{dataset}", "{vision}", "{chunk}"),
    log:
        "logs/encode/{dataset}/image/{vision}/{chunk}.log",
    benchmark:
        "logs/benchmark/encode/{dataset}/image/{vision}/{chunk}.tsv"
    conda:
        "../../envs/sailflow.yaml"
    threads: config["encode"]["workers"]
    resources:
        gpu=1,
        batch_size=encode_batch_size("vision"),
    params:
        backbone=backbone_spec("vision"),
        dtype=config["encode"]["dtype"],
    script:
        "../scripts/encode_images.py"


rule encode_texts:
    input:
        samples=paths.chunk_file("{dataset}", "{chunk}", "samples.parquet"),
        model=backbone_model_input("text"),
    output:
        paths.text_embeddings("{dataset}", "{text}", "{caption_source}", "{chunk}"),
    log:
        "logs/encode/{dataset}/text/{text}/{caption_source}/{chunk}.log",
    benchmark:
        "logs/benchmark/encode/{dataset}/text/{text}/{caption_source}/{chunk}.tsv"
    conda:
        "../../envs/sailflow.yaml"
    resources:
        gpu=1,
        batch_size=encode_batch_size("text"),
    params:
        backbone=backbone_spec("text"),
        dtype=config["encode"]["dtype"],
    script:
        "../scripts/encode_texts.py"


rule check_embeddings:
    input:
        samples=lambda w: chunk_paths(w.dataset, "samples.parquet"),
        image=lambda w: image_embedding_paths(w.dataset, w.vision),
        text=lambda w: text_embedding_paths(w.dataset, w.text),
    output:
        paths.embeddings_check("{dataset}", "{vision}", "{text}"),
    log:
        "logs/encode/{dataset}/check_{vision}__{text}.log",
    localrule: True  # reads file headers and sample ids, not the embeddings
    conda:
        "../../envs/sailflow.yaml"
    params:
        caption_sources=lambda w: caption_sources(w.dataset),
    script:
        "../scripts/check_embeddings.py"
