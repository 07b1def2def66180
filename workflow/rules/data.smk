# Data stages: source table -> urls.parquet -> chunks -> img2dataset shards -> filtered
# samples.parquet per chunk + manifest.json per dataset. Paths: src/sailflow/paths.py.


rule fetch_source:
    output:
        "resources/sources/{dataset}/{filename}",
    log:
        "logs/data/{dataset}/fetch_{filename}.log",
    localrule: True  # a download: the login node has the internet that compute nodes often lack
    conda:
        "../../envs/sailflow.yaml"
    params:
        url=source_url,
    script:
        "../scripts/fetch_source.py"


rule normalize_urls:
    input:
        dataset_source,
    output:
        urls=paths.urls("{dataset}"),
        report=paths.urls_report("{dataset}"),
    log:
        "logs/data/{dataset}/normalize.log",
    conda:
        "../../envs/sailflow.yaml"
    params:
        table=table_options,
    script:
        "../scripts/normalize_urls.py"


# A dataset's chunk count decides how many files these jobs write, so they are defined per dataset.
for _ds in DATASETS:

    rule:
        name:
            f"split_urls_{_ds}"
        input:
            paths.urls(_ds),
        output:
            chunk_paths(_ds, "urls.parquet"),
        log:
            f"logs/data/{_ds}/split.log",
        localrule: True  # streams the table into chunks, batch by batch: little memory, no cluster job
        conda:
            "../../envs/sailflow.yaml"
        params:
            n_chunks=DATASETS[_ds]["n_chunks"],  # a new chunk count must re-split
        script:
            "../scripts/split_urls.py"

    rule:
        name:
            f"cleanup_{_ds}"
        input:
            report=paths.urls_report(_ds),
            urls=chunk_paths(_ds, "urls.parquet"),
            downloads=chunk_paths(_ds, "download.json"),
            filtered=chunk_paths(_ds, "filtered.parquet"),
            filter_reports=chunk_paths(_ds, "filter.json"),
        output:
            samples=chunk_paths(_ds, "samples.parquet"),
            manifest=paths.manifest(_ds),
        # not a localrule: rewrites every chunk's table and holds every image hash of the dataset (GBs at 15M)
        log:
            f"logs/data/{_ds}/cleanup.log",
        conda:
            "../../envs/sailflow.yaml"
        params:
            dataset=_ds,
            chunks=chunks_of(_ds),
            caption_sources=caption_sources(_ds),
        script:
            "../scripts/cleanup_dataset.py"


rule download_chunk:
    input:
        paths.chunk_file("{dataset}", "{chunk}", "urls.parquet"),
    output:
        paths.chunk_file("{dataset}", "{chunk}", "download.json"),
    log:
        "logs/data/{dataset}/download/{chunk}.log",
    benchmark:
        "logs/benchmark/data/{dataset}/download/{chunk}.tsv"
    conda:
        "../../envs/sailflow.yaml"
    threads: download_processes
    resources:
        download_threads=download_threads_per_process,
        # the success-rate gate: a resource (a string, kept exact), not a param, so that changing
        # it reruns no chunk that already passed, and nothing downstream
        min_success_rate=download_min_success_rate,
    params:
        options=download_options,
        limits=download_limits,
    script:
        "../scripts/download_chunk.py"


rule filter_chunk:
    input:
        paths.chunk_file("{dataset}", "{chunk}", "download.json"),
    output:
        filtered=paths.chunk_file("{dataset}", "{chunk}", "filtered.parquet"),
        report=paths.chunk_file("{dataset}", "{chunk}", "filter.json"),
    log:
        "logs/data/{dataset}/filter/{chunk}.log",
    conda:
        "../../envs/sailflow.yaml"
    threads: filter_processes
    params:
        limits=image_limits,
    script:
        "../scripts/filter_chunk.py"
