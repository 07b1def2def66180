"""Figures of the report, drawn with matplotlib (Agg) from a run's result files: training curves, a
zero-shot confusion matrix, retrieval examples and worst misses, and Winoground / MMVP example
pairs with their scores. Each function writes one file atomically."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from sailflow.io import atomic_path

GOOD, BAD = "#1e7b34", "#b42318"


class ReportError(ValueError):
    pass


def read_task_result(path: str | Path, key: str) -> dict:
    """A task's result file that must hold ``key`` (what its kind keeps for the report); a file
    scored before the kind kept it is refused with the command that rescores it."""
    result = json.loads(Path(path).read_text())
    if key not in result:
        raise ReportError(f"{path} has no `{key}`: it was scored by an older sailflow. Rescore it: "
                          f"snakemake --cores 2 --forcerun evaluate {path}")
    return result


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path, fmt: str, dpi: int = 80) -> None:
    plt = _pyplot()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    plt.close(fig)


def _finish(fig, title: str) -> None:
    """The title above the panels (tight_layout alone lets it overlap the first row)."""
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))


def _thumbnail(path: str | Path, side: int = 256):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        return im


def _show_image(ax, path, border: str | None = None, label: str = "", color: str = "black") -> None:
    ax.imshow(_thumbnail(path))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border:
            spine.set_edgecolor(border)
            spine.set_linewidth(3)
    if label:
        ax.set_title(label, fontsize=8, color=color)


def _wrap(text: str, width: int, limit: int = 160) -> str:
    return textwrap.fill(textwrap.shorten(text, limit, placeholder=" ..."), width)


# ---- training ------------------------------------------------------------------------------------
def read_train_log(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training(train_log: str | Path, out: str | Path, title: str) -> None:
    """Four panels against step, as SVG: loss (the mean over each logging interval), learning rate,
    logit scale (exp of the learned parameter, as the loss uses it) and logit bias."""
    plt = _pyplot()
    rows = read_train_log(train_log)
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(9, 5), sharex=True)
    panels = [("loss", "loss", "tab:blue"), ("lr", "learning rate", "tab:gray"),
              ("logit_scale", "logit scale", "tab:purple"), ("logit_bias", "logit bias", "tab:orange")]
    for ax, (key, label, color) in zip(axes.flat, panels):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(steps, [math.nan if v is None else v for v in values], color=color, marker="." if len(rows) < 30 else None)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out, "svg")


def plot_llava_training(train_logs: dict[str, str | Path], out: str | Path, title: str) -> None:
    """A LLaVA run's stages side by side, as SVG: loss (per logging step), learning rate and gradient
    norm against the optimiser step of each stage (``train_log.jsonl`` of pretrain and finetune)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, len(train_logs), figsize=(4.5 * len(train_logs), 6), sharex="col", squeeze=False)
    for col, (stage, path) in enumerate(train_logs.items()):
        rows = read_train_log(path)
        steps = [r["step"] for r in rows]
        for row, (key, label, color) in enumerate([("loss", "loss", "tab:blue"), ("lr", "learning rate", "tab:gray"),
                                                   ("grad_norm", "gradient norm", "tab:red")]):
            ax = axes[row][col]
            ax.plot(steps, [r.get(key, math.nan) for r in rows], color=color, marker="." if len(rows) < 30 else None)
            ax.set_title(f"{stage}: {label}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        axes[-1][col].set_xlabel("optimiser step")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out, "svg")


# ---- zero-shot classification --------------------------------------------------------------------
def confusion_dense(confusion: dict) -> list[list[int]]:
    """``[C, C]`` counts (row: true class, column: predicted) from a zeroshot result's ``confusion``
    (class names and its non-zero cells ``[true, predicted, images]``)."""
    c = len(confusion["classes"])
    m = [[0] * c for _ in range(c)]
    for t, p, n in confusion["counts"]:
        m[t][p] += n
    return m


def top_confusions(confusion: dict, n: int = 20) -> list[tuple[str, str, int]]:
    """The ``n`` largest off-diagonal cells as (true class, predicted class, images), largest first."""
    names = confusion["classes"]
    cells = sorted(((-k, t, p) for t, p, k in confusion["counts"] if t != p))[:n]
    return [(names[t], names[p], -k) for k, t, p in cells]


def plot_confusion(confusion: dict, out: str | Path, title: str, max_classes: int = 40) -> None:
    """The top-1 confusion matrix, colours normalised per true class (counts written in the cells
    up to 20 classes); above ``max_classes`` classes, the most frequent confusions as bars. SVG."""
    plt = _pyplot()
    names = confusion["classes"]
    c = len(names)
    if c <= max_classes:
        m = confusion_dense(confusion)
        totals = [sum(r) for r in m]
        frac = [[v / t if t else 0.0 for v in r] for r, t in zip(m, totals)]
        side = min(max(4.0, 0.45 * c + 2.0), 14.0)
        fig, ax = plt.subplots(figsize=(side + 1.2, side))
        im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        ticks = list(range(c))
        ax.set_xticks(ticks, names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center", fontsize=8)
        ax.set_yticks(ticks, [f"{n} ({t})" for n, t in zip(names, totals)], fontsize=8)
        ax.set_xlabel("predicted class (top-1)")
        ax.set_ylabel("true class (images)")
        if c <= 20:
            for i in range(c):
                for j in range(c):
                    if m[i][j]:
                        ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=8,
                                color="white" if frac[i][j] > 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    else:
        top = top_confusions(confusion)
        fig, ax = plt.subplots(figsize=(8, 0.3 * len(top) + 1.5))
        ax.barh(range(len(top)), [k for _, _, k in top], color="tab:red")
        ax.set_yticks(range(len(top)), [f"{t} → {p}" for t, p, _ in top], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("images (true → predicted)")
        ax.set_title(f"the {len(top)} most frequent confusions of {c} classes", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out, "svg")


# ---- retrieval -----------------------------------------------------------------------------------
def retrieval_grid(task_result: dict, out: str | Path, title: str) -> None:
    """Each example image with its top-3 retrieved captions (green: one of its own), as PNG."""
    plt = _pyplot()
    ex = task_result["examples"]
    cols = 4
    nrows = max(1, math.ceil(len(ex) / cols))
    fig = plt.figure(figsize=(3.6 * cols, 5.4 * nrows))
    grid = fig.add_gridspec(2 * nrows, cols, height_ratios=[3, 2.4] * nrows)
    for n, e in enumerate(ex):
        r, c = divmod(n, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        _show_image(ax, e["image"])
        txt = fig.add_subplot(grid[2 * r + 1, c])
        txt.axis("off")
        y = 1.0
        for k, hit in enumerate(e["retrieved"]):
            text = _wrap(f"{k + 1}. {hit['caption']} ({hit['score']:.3f})", 44, 110)
            txt.text(0.0, y, text, transform=txt.transAxes, fontsize=8, va="top", color=GOOD if hit["correct"] else BAD)
            y -= 0.11 * (text.count("\n") + 1) + 0.04
    _finish(fig, title)
    _save(fig, out, "png")


def retrieval_misses(task_result: dict, out: str | Path, title: str) -> None:
    """The captions whose own image ranked worst (text -> image): the caption, its own image with
    its rank and score, and the top-3 images retrieved instead, as PNG."""
    plt = _pyplot()
    misses = task_result["misses"]
    n_images = task_result["counts"]["images"]
    nrows = max(1, len(misses))
    fig = plt.figure(figsize=(11, 2.3 * nrows + 0.5))
    grid = fig.add_gridspec(nrows, 5, width_ratios=[1.7, 1, 1, 1, 1])
    for r, m in enumerate(misses):
        txt = fig.add_subplot(grid[r, 0])
        txt.axis("off")
        txt.text(0.0, 0.95, _wrap(m["caption"], 36, 200), transform=txt.transAxes, fontsize=9, va="top")
        txt.text(0.0, 0.05, f"own image: rank {m['rank']:,} of {n_images:,}", transform=txt.transAxes, fontsize=8, color=BAD)
        _show_image(fig.add_subplot(grid[r, 1]), m["image"], GOOD, f"own image, {m['score']:.3f}", GOOD)
        for k, hit in enumerate(m["retrieved"]):
            _show_image(fig.add_subplot(grid[r, 2 + k]), hit["image"], BAD, f"retrieved #{k + 1}, {hit['score']:.3f}", BAD)
    _finish(fig, title)
    _save(fig, out, "png")


# ---- Winoground and MMVP pairs -------------------------------------------------------------------
def pair_grid(task_result: dict, out: str | Path, title: str, outcomes: tuple[str, ...], caption_label: str = "caption") -> None:
    """Example pairs of a 2x2 task (Winoground, MMVP): both images, the caption x image scores as a
    2x2 grid (row c, column i; the diagonal holds the matching pairs) and the task's outcomes (e.g.
    text / image / group: green if counted correct), as PNG."""
    plt = _pyplot()
    ex = task_result["examples"]
    nrows = max(1, len(ex))
    fig = plt.figure(figsize=(12, 2.1 * nrows))
    grid = fig.add_gridspec(nrows, 4, width_ratios=[1, 1, 1.05, 3.6])
    for r, e in enumerate(ex):
        for i in range(2):
            _show_image(fig.add_subplot(grid[r, i]), e["images"][i], label=f"image {i}")
        s = e["scores"]
        ax = fig.add_subplot(grid[r, 2])
        ax.imshow([[0, 0], [0, 0]], cmap="Greys", vmin=0, vmax=1)  # a white 2x2 grid
        ax.axhline(0.5, color="#9aa5b1", linewidth=0.8)
        ax.axvline(0.5, color="#9aa5b1", linewidth=0.8)
        for c in range(2):
            for i in range(2):
                ax.text(i, c, f"{s[c][i]:.3f}", ha="center", va="center", fontsize=9, fontweight="bold" if c == i else "normal")
        ax.set_xticks([0, 1], ["image 0", "image 1"], fontsize=8)
        ax.set_yticks([0, 1], [f"{caption_label} 0", f"{caption_label} 1"], fontsize=8)
        ax.tick_params(length=0)
        txt = fig.add_subplot(grid[r, 3])
        txt.axis("off")
        for c in range(2):
            txt.text(0.0, 0.95 - 0.36 * c, _wrap(f"{caption_label} {c}: {e['captions'][c]}", 70, 200), transform=txt.transAxes,
                     fontsize=9, va="top")
        x = 0.0
        for name in outcomes:
            ok = e[name]
            label = f"{name} {'✓' if ok else '✗'}"
            txt.text(x, 0.05, label, transform=txt.transAxes, fontsize=10, color=GOOD if ok else BAD, fontweight="bold")
            x += 0.03 + 0.022 * len(label)
        if e.get("tag"):
            txt.text(x + 0.02, 0.05, e["tag"], transform=txt.transAxes, fontsize=9, color="#52606d")
    _finish(fig, title)
    _save(fig, out, "png")


# ---- LLaVA benchmarks ------------------------------------------------------------------------------
def _decoded(example: dict):
    """The example's image as a thumbnail (a file, or inline base64 as MMBench keeps it), or None."""
    import base64
    import io

    if "image" in example:
        return _thumbnail(example["image"])
    if "image_b64" in example:
        return _thumbnail(io.BytesIO(base64.b64decode(example["image_b64"])))
    return None


def llava_examples_grid(task_results: dict[str, dict], out: str | Path, title: str, per_task: int = 4) -> None:
    """Benchmark questions of a LLaVA run, ``per_task`` per task (spread over each set): the image, the
    question, the model's answer and the gold answer, green where the question scored (VQA accuracy > 0,
    or right), red where not; as PNG. VQAScore tasks show their Winoground-style pairs' captions and scores."""
    plt = _pyplot()
    rows = []
    for task, r in task_results.items():
        for e in r.get("examples", [])[:per_task]:
            if "question" in e:
                rows.append((task, e))
            else:  # a VQAScore pair: image 0 with its two captions' scores
                rows.append((task, {"image": e["images"][0], "question": f"VQAScore of \"{e['captions'][0]}\" vs \"{e['captions'][1]}\"",
                                    "answer": f"{e['scores'][0][0]:.3f} vs {e['scores'][1][0]:.3f}",
                                    "gold": "the first higher", "score": float(e["scores"][0][0] > e["scores"][1][0])}))
    nrows = max(1, len(rows))
    fig = plt.figure(figsize=(11, 1.6 * nrows))
    grid = fig.add_gridspec(nrows, 2, width_ratios=[1, 6])
    for n, (task, e) in enumerate(rows):
        ax = fig.add_subplot(grid[n, 0])
        ax.axis("off")
        image = _decoded(e)
        if image is not None:
            ax.imshow(image)
        txt = fig.add_subplot(grid[n, 1])
        txt.axis("off")
        ok = e.get("score")
        colour = "black" if ok is None else GOOD if ok > 0 else BAD
        txt.text(0.0, 0.95, f"{task} · {e.get('question_id', '')}", transform=txt.transAxes, fontsize=8, color="#52606d", va="top")
        txt.text(0.0, 0.75, _wrap(e["question"], 110, 300), transform=txt.transAxes, fontsize=8.5, va="top")
        gold = f"   gold: {_wrap(str(e['gold']), 50, 60)}" if "gold" in e else ""
        txt.text(0.0, 0.08, _wrap(f"model: {e['answer']!s}", 60, 80) + gold, transform=txt.transAxes, fontsize=9.5, color=colour,
                 fontweight="bold")
    _finish(fig, title)
    _save(fig, out, "png")
