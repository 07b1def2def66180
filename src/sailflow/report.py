"""Figures and tables for ``snakemake --report``: loss curves, metric tables, data counts and a grid
of retrieval examples. Each function writes one file atomically."""

from __future__ import annotations

import html
import json
import math
import textwrap
from pathlib import Path

from sailflow.io import atomic_path

_STYLE = ("<style>body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin:0 0 1.5em} "
          "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th:first-child,td:first-child{text-align:left} "
          "caption{text-align:left;font-weight:bold;padding:4px 0}</style>")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(caption: str, header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _write_html(path: str | Path, title: str, body: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head>"
                       f"<body>{body}</body></html>\n", encoding="utf-8")


def read_train_log(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss(train_log: str | Path, out: str | Path, title: str) -> None:
    """Training loss (and learning rate on a second axis) against step, as SVG."""
    plt = _pyplot()
    rows = read_train_log(train_log)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_title(title)
    lr = ax.twinx()
    lr.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:gray", linestyle="--", linewidth=1)
    lr.set_ylabel("learning rate", color="tab:gray")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)


def metrics_html(summaries: dict[str, dict], out: str | Path) -> None:
    """One table per task: a row per run, a column per metric (with chance), from ``eval.json`` files."""
    by_task: dict[str, dict] = {}
    for run, s in summaries.items():
        for task, r in s["tasks"].items():
            by_task.setdefault(task, {})[run] = r
    parts = ["<h3>Evaluation metrics per run and task (fractions; chance in the last row)</h3>"]
    for task, runs in by_task.items():
        names = list(dict.fromkeys(k for r in runs.values() for k in r["metrics"]))
        first = next(iter(runs.values()))
        rows = [[run, *[r["metrics"].get(k) for k in names]] for run, r in runs.items()]
        rows.append(["chance", *[first["chance"].get(k) for k in names]])
        counts = ", ".join(f"{k} {v}" for k, v in first["counts"].items())
        parts.append(_table(f"{task} ({first['kind']}; {counts}; ties: {first['tie_rule']})", ["run", *names], rows))
    runs_rows = [[run, s["vision"], s["text"], s["data"]["train_pairs"], s["align"]["steps"], s["fingerprint"],
                  (s.get("git") or {}).get("commit", "")[:10]] for run, s in summaries.items()]
    parts.append(_table("runs", ["run", "vision", "text", "train pairs", "steps", "config fingerprint", "commit"], runs_rows))
    _write_html(out, "metrics", "".join(parts))


def data_html(manifests: list[dict], out: str | Path) -> None:
    """Counts of every dataset of a run: input rows, downloaded, kept, and drops by reason."""
    reasons = sorted({k for m in manifests for k in m.get("dropped", {})})
    rows = [[m["dataset"], m["input_rows"], m.get("downloaded"), m["kept"], *[m.get("dropped", {}).get(k, 0) for k in reasons]]
            for m in manifests]
    empty = sorted({k for m in manifests for k in m.get("empty_captions", {})})
    caps = [[m["dataset"], *[m.get("empty_captions", {}).get(k) for k in empty]] for m in manifests]
    _write_html(out, "data", _table("data manifest: rows per stage and drops by reason", ["dataset", "input rows", "downloaded", "kept", *reasons], rows)
                + _table("empty captions per caption source (kept when another caption exists)", ["dataset", *empty], caps))


def retrieval_grid(task_result: dict, out: str | Path, title: str) -> None:
    """The report's example grid: each image with its top-3 retrieved captions (green: one of its own)."""
    from PIL import Image

    plt = _pyplot()
    ex = task_result["examples"]
    cols = 4
    nrows = math.ceil(len(ex) / cols)
    fig = plt.figure(figsize=(3.6 * cols, 5.4 * nrows))
    grid = fig.add_gridspec(2 * nrows, cols, height_ratios=[3, 2.4] * nrows)
    for n, e in enumerate(ex):
        r, c = divmod(n, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        with Image.open(e["image"]) as im:
            ax.imshow(im.convert("RGB"))
        ax.axis("off")
        txt = fig.add_subplot(grid[2 * r + 1, c])
        txt.axis("off")
        y = 1.0
        for k, hit in enumerate(e["retrieved"]):
            text = textwrap.fill(textwrap.shorten(f"{k + 1}. {hit['caption']}", 100, placeholder=" ..."), 44)
            txt.text(0.0, y, text, transform=txt.transAxes, fontsize=8, va="top", color="green" if hit["correct"] else "firebrick")
            y -= 0.11 * (text.count("\n") + 1) + 0.04
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
