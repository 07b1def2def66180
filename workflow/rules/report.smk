# Figures and tables for `snakemake --report results/report.html`, for the runs under `report: runs:`.
# The landing page (workflow.rst) includes each run's summary.html: its metrics with chance, held-out
# R@1, data funnel and hyper-parameters. The figures are report items: training curves, the data
# funnel per chunk, every run's metrics side by side, and per evaluation task its kind's figure.
# The tables read small JSON files (local rules: on a cluster they run where snakemake runs).


report: "../report/workflow.rst"


rule report_summary:
    input:
        summary=paths.eval_summary("{run}"),
        manifests=run_manifests,
    output:
        report(
            paths.report_file("{run}", "summary.html"), caption="../report/summary.rst", category="Summary", subcategory="{run}"
        ),
    log:
        "logs/{run}/report_summary.log",
    localrule: True
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_summary.py"


rule report_metrics:
    input:
        [paths.eval_summary(run) for run in config["report"]["runs"] if run in RUNS]
        + [paths.llava_eval_summary(run) for run in config["report"]["runs"] if run in LLAVA_RUNS and LLAVA_RUNS[run]["eval"]],
    output:
        report(paths.report_metrics(), caption="../report/metrics.rst", category="Metrics"),
    log:
        "logs/report_metrics.log",
    localrule: True
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_metrics.py"


rule report_data:
    input:
        run_manifests,
    output:
        report(paths.report_file("{run}", "data.html"), caption="../report/data.rst", category="Data", subcategory="{run}"),
    log:
        "logs/{run}/report_data.log",
    localrule: True
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_data.py"


rule report_training:
    input:
        paths.align_config("{run}"),  # train_log.jsonl beside it is complete once this exists
    output:
        report(
            paths.report_file("{run}", "training.svg"),
            caption="../report/training.rst",
            category="Training",
            subcategory="{run}",
        ),
    log:
        "logs/{run}/report_training.log",
    localrule: True  # a small figure from a JSON file: not worth a cluster job
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_training.py"


rule report_zeroshot:
    input:
        paths.eval_result("{run}", "{task}"),
    output:
        report(
            paths.report_file("{run}", "confusion_{task}.svg"),
            caption="../report/zeroshot.rst",
            category="Zero-shot classification",
            subcategory="{run}",
        ),
    log:
        "logs/{run}/report_zeroshot_{task}.log",
    localrule: True  # a small figure from a JSON file: not worth a cluster job
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_zeroshot.py"


rule report_retrieval:
    input:
        paths.eval_result("{run}", "{task}"),
    output:
        examples=report(
            paths.report_file("{run}", "retrieval_{task}.png"),
            caption="../report/retrieval.rst",
            category="Retrieval",
            subcategory="{run}",
        ),
        misses=report(
            paths.report_file("{run}", "misses_{task}.png"),
            caption="../report/misses.rst",
            category="Retrieval",
            subcategory="{run}",
        ),
    log:
        "logs/{run}/report_retrieval_{task}.log",
    localrule: True  # a small figure from a JSON file: not worth a cluster job
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_retrieval.py"


rule report_pairs:
    input:
        paths.eval_result("{run}", "{task}"),
    output:
        report(
            paths.report_file("{run}", "pairs_{task}.png"),
            caption="../report/pairs.rst",
            category="Winoground and MMVP",
            subcategory="{run}",
        ),
    log:
        "logs/{run}/report_pairs_{task}.log",
    localrule: True  # a small figure from a JSON file: not worth a cluster job
    conda:
        "../../envs/sailflow.yaml"
    params:
        kind=lambda wildcards: EVAL_TASKS[wildcards.task]["kind"],
    script:
        "../scripts/report_pairs.py"


rule report_llava_training:
    input:
        pretrain=paths.llava_manifest("{run}", "pretrain"),  # train_log.jsonl beside each is complete once these exist
        finetune=paths.llava_manifest("{run}", "finetune"),
    output:
        report(
            paths.report_file("{run}", "llava_training.svg"),
            caption="../report/llava_training.rst",
            category="Training",
            subcategory="{run}",
        ),
    log:
        "logs/{run}/report_llava_training.log",
    localrule: True  # a small figure from two JSON-lines files
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_llava_training.py"


rule report_llava_examples:
    input:
        llava_eval_results,
    output:
        report(
            paths.report_file("{run}", "llava_examples.png"),
            caption="../report/llava_examples.rst",
            category="LLaVA benchmarks",
            subcategory="{run}",
        ),
    log:
        "logs/{run}/report_llava_examples.log",
    localrule: True  # a small figure from JSON files
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_llava_examples.py"
