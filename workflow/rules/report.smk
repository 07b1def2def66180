# Figures and tables for `snakemake --report results/report.html`: training curves, metrics of every
# run in `report: runs:`, data counts, and retrieval examples.


report: "../report/workflow.rst"


rule report_training:
    input:
        "results/{run}/align/config.json",  # train_log.jsonl beside it is complete once this exists
    output:
        report("results/{run}/report/loss.svg", caption="../report/loss.rst", category="Training", subcategory="{run}"),
    log:
        "logs/{run}/report_training.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_training.py"


rule report_data:
    input:
        run_manifests,
    output:
        report("results/{run}/report/data.html", caption="../report/data.rst", category="Data", subcategory="{run}"),
    log:
        "logs/{run}/report_data.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_data.py"


rule report_retrieval:
    input:
        "results/{run}/eval/{task}.json",
    output:
        report("results/{run}/report/retrieval_{task}.png", caption="../report/retrieval.rst", category="Retrieval examples",
               subcategory="{run}"),
    log:
        "logs/{run}/report_retrieval_{task}.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_retrieval.py"


rule report_metrics:
    input:
        [f"results/{run}/eval.json" for run in config["report"]["runs"]],
    output:
        report("results/report/metrics.html", caption="../report/metrics.rst", category="Metrics"),
    log:
        "logs/report_metrics.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/report_metrics.py"
