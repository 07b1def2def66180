"""The report of ``snakemake --report``: tables (:mod:`.tables`: the landing page's run summary,
metrics with chance, the data funnel) and figures (:mod:`.figures`), from the contents of result
files; each writer writes one file atomically. The workflow's report scripts are thin users."""

from sailflow.report.figures import (
    ReportError,
    confusion_dense,
    llava_examples_grid,
    pair_grid,
    plot_confusion,
    plot_llava_training,
    plot_training,
    read_task_result,
    read_train_log,
    retrieval_grid,
    retrieval_misses,
    top_confusions,
)
from sailflow.report.tables import data_html, funnel, funnel_table, metric_rows, metrics_html, settings_rows, summary_html

__all__ = [
    "confusion_dense", "data_html", "funnel", "funnel_table", "llava_examples_grid", "metric_rows", "metrics_html", "pair_grid",
    "plot_confusion", "plot_llava_training", "plot_training", "read_task_result", "read_train_log", "ReportError", "retrieval_grid",
    "retrieval_misses", "settings_rows", "summary_html", "top_confusions",
]
