# Pre-encoding: frozen backbones over every chunk. One job per (dataset, chunk, backbone[, caption
# source]); row k of each output is row k of the chunk's samples.parquet.


rule encode_images:
    input:
        samples="results/data/{dataset}/chunks/{chunk}/samples.parquet",
        model=backbone_model_input("vision"),
    output:
        "results/embeddings/{dataset}/image/{vision}/{chunk}.safetensors",
    params:
        backbone=backbone_spec("vision"),
        dtype=config["encode"]["dtype"],
    threads: config["encode"]["workers"]
    resources:
        gpu=1,
        batch_size=encode_batch_size("vision"),
    log:
        "logs/encode/{dataset}/image/{vision}/{chunk}.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/encode_images.py"


rule encode_texts:
    input:
        samples="results/data/{dataset}/chunks/{chunk}/samples.parquet",
        model=backbone_model_input("text"),
    output:
        "results/embeddings/{dataset}/text/{text}/{caption_source}/{chunk}.safetensors",
    params:
        backbone=backbone_spec("text"),
        dtype=config["encode"]["dtype"],
    resources:
        gpu=1,
        batch_size=encode_batch_size("text"),
    log:
        "logs/encode/{dataset}/text/{text}/{caption_source}/{chunk}.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/encode_texts.py"


rule check_embeddings:
    input:
        samples=lambda w: chunk_paths(w.dataset, "samples.parquet"),
        image=lambda w: image_embedding_paths(w.dataset, w.vision),
        text=lambda w: text_embedding_paths(w.dataset, w.text),
    output:
        "results/embeddings/{dataset}/{vision}__{text}.json",
    params:
        caption_sources=lambda w: caption_sources(w.dataset),
    log:
        "logs/encode/{dataset}/check_{vision}__{text}.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/check_embeddings.py"
