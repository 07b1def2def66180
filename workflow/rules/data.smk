# Data stages: source table -> urls.parquet -> chunks -> img2dataset shards -> filtered
# samples.parquet per chunk + manifest.json per dataset. Paths: ../../DESIGN.md (Artifacts).


rule fetch_source:
    output:
        "resources/sources/{dataset}/{filename}",
    params:
        url=source_url,
    log:
        "logs/data/{dataset}/fetch_{filename}.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/fetch_source.py"


rule normalize_urls:
    input:
        dataset_source,
    output:
        urls="results/data/{dataset}/urls.parquet",
        report="results/data/{dataset}/urls.json",
    params:
        table=table_options,
    log:
        "logs/data/{dataset}/normalize.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/normalize_urls.py"


# A dataset's chunk count decides how many files these jobs write, so they are defined per dataset.
for _ds in DATASETS:

    rule:
        name:
            f"split_urls_{_ds}"
        input:
            f"{data_dir(_ds)}/urls.parquet",
        output:
            chunk_paths(_ds, "urls.parquet"),
        params:
            n_chunks=DATASETS[_ds]["n_chunks"],  # a new chunk count must re-split
        log:
            f"logs/data/{_ds}/split.log",
        conda:
            "../../envs/sailflow.yaml"
        script:
            "../scripts/split_urls.py"

    rule:
        name:
            f"cleanup_{_ds}"
        input:
            report=f"{data_dir(_ds)}/urls.json",
            urls=chunk_paths(_ds, "urls.parquet"),
            downloads=chunk_paths(_ds, "download.json"),
            filtered=chunk_paths(_ds, "filtered.parquet"),
            filter_reports=chunk_paths(_ds, "filter.json"),
        output:
            samples=chunk_paths(_ds, "samples.parquet"),
            manifest=f"{data_dir(_ds)}/manifest.json",
        params:
            dataset=_ds,
            chunks=chunks_of(_ds),
            caption_sources=caption_sources(_ds),
        log:
            f"logs/data/{_ds}/cleanup.log",
        conda:
            "../../envs/sailflow.yaml"
        script:
            "../scripts/cleanup_dataset.py"


rule download_chunk:
    input:
        "results/data/{dataset}/chunks/{chunk}/urls.parquet",
    output:
        "results/data/{dataset}/chunks/{chunk}/download.json",
    params:
        options=download_options,
        limits=download_limits,
    threads: download_processes
    resources:
        download_threads=download_threads_per_process,
        # the success-rate gate: a resource (a string, kept exact), not a param, so that changing
        # it reruns no chunk that already passed, and nothing downstream
        min_success_rate=download_min_success_rate,
    log:
        "logs/data/{dataset}/download/{chunk}.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/download_chunk.py"


rule filter_chunk:
    input:
        "results/data/{dataset}/chunks/{chunk}/download.json",
    output:
        filtered="results/data/{dataset}/chunks/{chunk}/filtered.parquet",
        report="results/data/{dataset}/chunks/{chunk}/filter.json",
    params:
        limits=image_limits,
    threads: filter_processes
    log:
        "logs/data/{dataset}/filter/{chunk}.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/filter_chunk.py"
