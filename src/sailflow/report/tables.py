"""HTML tables of the report: the data funnel, metrics with chance levels, a run's settings and the
landing-page summary of a run. Every number is read from the result files (``eval.json``, the data
manifests); nothing is recomputed for display, only counts of a funnel step are summed from their reasons."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

from sailflow.io import atomic_path

STYLE = """
.sailflow{font-family:system-ui,sans-serif;font-size:13px;line-height:1.35;color:#1f2933}
.sailflow h2{font-size:17px;margin:18px 0 6px}
.sailflow h3{font-size:14px;margin:12px 0 4px}
.sailflow .sub{color:#52606d;margin:0 0 8px}
.sailflow .cols{display:flex;flex-wrap:wrap;gap:10px 28px;align-items:flex-start}
.sailflow table{border-collapse:collapse;margin:0 0 10px;font-variant-numeric:tabular-nums}
.sailflow th,.sailflow td{border:1px solid #cbd2d9;padding:2px 7px;text-align:right;vertical-align:top}
.sailflow th{background:#f0f4f8;font-weight:600}
.sailflow th:first-child,.sailflow td:first-child,.sailflow td.l,.sailflow th.l{text-align:left}
.sailflow caption{text-align:left;font-weight:600;padding:3px 0;caption-side:top}
.sailflow td.reason{padding-left:22px;color:#52606d}
.sailflow tr.rows td{font-weight:600}
.sailflow tr.stage td{color:#9b2c2c}
.sailflow td.above{color:#1e7b34;font-weight:600}
.sailflow td.below{color:#9b2c2c}
.sailflow code{font-size:12px;font-weight:600}
.sailflow code::before,.sailflow code::after{content:none}
.sailflow small{color:#52606d;font-size:11px}
.sailflow td.k{color:#52606d;text-align:left}
.sailflow tr.first td{border-top:2px solid #9aa5b1}
"""
# The report's landing page shows the workflow description in a narrow column (Tailwind's max-w-lg),
# centred vertically (a page taller than the window would lose its top): when it holds a run summary,
# widen the column, so the tables sit side by side, and start it at the top.
LANDING_STYLE = ".prose:has(.sailflow){max-width:none} .items-center:has(.sailflow){align-items:flex-start}"


def fmt(v) -> str:
    """A cell: fractions to 4 decimals, integers with thousands separators, None/NaN as an en dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    return html.escape(str(v))


def table(caption: str, header: list[str], rows: list[list], row_class: list[str] | None = None, cell_class=None,
          left: tuple[int, ...] = (0,)) -> str:
    """``rows`` of values (formatted by :func:`fmt`; a ``Raw`` value is inserted as it is); ``left``:
    the text columns (aligned left, numbers right); ``cell_class(row, column)``: a cell's class."""
    head = "".join(f"<th{' class=l' if j in left else ''}>{html.escape(h)}</th>" for j, h in enumerate(header))
    body = []
    for n, r in enumerate(rows):
        cls = f" class='{row_class[n]}'" if row_class and row_class[n] else ""
        cells = []
        for j, v in enumerate(r):
            c = (cell_class(n, j) if cell_class else "") or ("l" if j in left else "")
            cells.append(f"<td{f' class={c!r}' if c else ''}>{v.html if isinstance(v, Raw) else fmt(v)}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass(frozen=True)
class Raw:
    """A cell of ready HTML."""

    html: str


def write_page(path: str | Path, title: str, body: str) -> None:
    """A standalone page (a report item opens in a frame)."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                       f"<style>{STYLE}</style></head><body class='sailflow'>{body}</body></html>\n", encoding="utf-8")


# ---- data funnel ---------------------------------------------------------------------------------
STAGES = (("normalize", "URLs", "urls"), ("download", "downloaded", "downloaded"), ("filter", None, None), ("cleanup", "kept", "kept"))


@dataclass
class FunnelRow:
    label: str
    kind: str  # "rows": rows left; "stage": rows a stage dropped (sum of its reasons); "reason": one reason
    values: list  # one per column (None: not known per dataset)


def funnel(manifests: list[dict], sources: list[dict] | None = None, train_pairs: int | None = None,
           settings: dict | None = None) -> tuple[list[str], list[FunnelRow]]:
    """Columns (one per dataset, plus ``all`` with several) and rows of the data funnel: source rows,
    then per stage (normalize, download, filter, cleanup) the rows it dropped, by reason, and the rows
    left; with the run's ``sources`` (``data`` of its config: dataset, caption_source) the kept rows
    without a positive caption (the trainer skips them), and with ``train_pairs`` (``pairs`` of the
    align config; ``settings``: its align settings, for the label) the rows not trained on (held out,
    outside ``subset``) and the training pairs (for the run, not per dataset).
    Every count is the manifest's; a stage's count is the sum of its reasons."""
    names = [m["dataset"] for m in manifests]
    many = len(manifests) > 1
    columns = names + (["all"] if many else [])

    def row(label, kind, values):
        vals = list(values)
        return FunnelRow(label, kind, vals + ([sum(vals)] if many else []))

    rows = [row("source rows", "rows", [m["input_rows"] for m in manifests])]
    for stage, after, key in STAGES:
        by_reason = [m["dropped_by_stage"].get(stage, {}) for m in manifests]
        reasons = sorted({r for d in by_reason for r in d})
        rows.append(row(f"− {stage}", "stage", [sum(d.values()) for d in by_reason]))
        rows += [row(r, "reason", [d.get(r, 0) for d in by_reason]) for r in reasons]
        if after:
            rows.append(row(f"= {after}", "rows", [m[key] for m in manifests]))
    if sources is not None:
        positive = {s["dataset"]: s["caption_source"] for s in sources}
        missing = [m["empty_captions"].get(positive[m["dataset"]], 0) for m in manifests]
        label = ", ".join(sorted(set(positive.values())))
        rows.append(row(f"− no positive caption ({label})", "stage", missing))
        usable = [m["kept"] - n for m, n in zip(manifests, missing)]
        rows.append(row("= with a positive caption", "rows", usable))
        if train_pairs is not None:
            blank = [None] * len(names) if many else []
            held = sum(usable) - train_pairs
            settings = settings or {}
            what = " / ".join([*([f"held out for R@1 (holdout {settings['holdout']:g})"] if settings.get("holdout") else []),
                               *(["outside subset"] if settings.get("subset") else [])]) or "not trained on"
            rows.append(FunnelRow(f"− {what}", "stage", blank + [held]))
            rows.append(FunnelRow("= training pairs", "rows", blank + [train_pairs]))
    return columns, rows


def funnel_table(manifests: list[dict], sources: list[dict] | None = None, train_pairs: int | None = None,
                 settings: dict | None = None, caption: str = "data funnel") -> str:
    columns, rows = funnel(manifests, sources, train_pairs, settings)

    def label(r: FunnelRow):
        return Raw(f"<span>{html.escape(r.label)}</span>")

    return table(caption, ["rows", *columns], [[label(r), *r.values] for r in rows],
                 row_class=[r.kind for r in rows], cell_class=lambda n, j: "reason" if j == 0 and rows[n].kind == "reason" else "")


def data_html(manifests: list[dict], out: str | Path) -> None:
    """A run's datasets: the funnel, counts per chunk and per drop reason, kept rows without a caption
    per caption source, and the first unreadable source rows."""
    parts = [funnel_table(manifests, caption="rows per stage, dropped by reason (each source row counted once)")]
    for m in manifests:
        reasons = sorted({r for c in m["chunks"].values() for r in c["dropped"]})
        rows = [[chunk, c["urls"], c["downloaded"], c["kept"], *[c["dropped"].get(r, 0) for r in reasons]] for chunk, c in m["chunks"].items()]
        parts.append(table(f"{m['dataset']}: per chunk", ["chunk", "URLs", "downloaded", "kept", *reasons], rows))
        empty = m.get("empty_captions", {})
        parts.append(table(f"{m['dataset']}: kept rows without a caption, per caption source (the trainer skips a "
                           "row only without its positive caption)", list(empty), [list(empty.values())]))
        if m.get("bad_rows"):
            parts.append(table(f"{m['dataset']}: unreadable source rows (first {len(m['bad_rows'])})", ["line", "problem"],
                               [[b["line"], b["problem"]] for b in m["bad_rows"]], left=(1,)))
    write_page(out, "data", "".join(parts))


# ---- metrics -------------------------------------------------------------------------------------
def metric_rows(tasks: dict[str, dict]) -> list[list]:
    """``[task, metric, value, chance, counts]`` for every metric of every task of an ``eval.json``
    (``tasks``), in its order; chance as the task recorded it (None where it has none)."""
    rows = []
    for task, r in tasks.items():
        counts = ", ".join(f"{v:,} {k}" for k, v in r["counts"].items())
        for n, (k, v) in enumerate(r["metrics"].items()):
            rows.append([task if n == 0 else "", k, v, r["chance"].get(k), counts if n == 0 else ""])
    return rows


def metrics_table(tasks: dict[str, dict], caption: str = "") -> str:
    """:func:`metric_rows` as a table, the counts under the task's name; a value above its chance in
    green, at or below it in red."""
    rows = metric_rows(tasks)
    cells = [[Raw(f"{html.escape(t)}<br><small>{html.escape(c)}</small>") if t else "", k, v, ch] for t, k, v, ch, c in rows]

    def shade(n, j):
        if j != 2 or rows[n][2] is None or rows[n][3] is None:
            return ""
        return "above" if rows[n][2] > rows[n][3] else "below"

    return table(caption, ["task", "metric", "value", "chance"], cells, cell_class=shade,
                 row_class=["first" if r[0] else "" for r in rows], left=(0, 1))


def metrics_html(summaries: dict[str, dict], out: str | Path) -> None:
    """Every run of the report side by side: a row per task/metric, a column per run, chance last;
    then the runs' backbones, training pairs, fingerprint and commit (from their ``eval.json``, or a
    LLaVA run's ``llava_eval.json``: tower, connector, LLM and its stage 2)."""
    keys = list(dict.fromkeys((t, k) for s in summaries.values() for t, r in s["tasks"].items() for k in r["metrics"]))
    chance = {}
    for s in summaries.values():
        for t, r in s["tasks"].items():
            for k, c in r["chance"].items():
                chance.setdefault((t, k), c)
    rows = [[t, k, *[s["tasks"].get(t, {}).get("metrics", {}).get(k) for s in summaries.values()], chance.get((t, k))]
            for t, k in keys]
    parts = [table("evaluation metrics (fractions; MME on its own scale), per run, with chance",
                   ["task", "metric", *summaries, "chance"], rows, left=(0, 1))]
    sail = {run: s for run, s in summaries.items() if "llava" not in s}
    llava = {run: s for run, s in summaries.items() if "llava" in s}
    if sail:
        runs_rows = [[run, s["vision"], s["text"], s["data"]["train_pairs"], s["align"]["steps"], s["fingerprint"], commit(s)]
                     for run, s in sail.items()]
        parts.append(table("SAIL runs", ["run", "vision", "text", "train pairs", "steps", "config fingerprint", "commit"], runs_rows,
                           left=(0, 1, 2, 5, 6)))
    if llava:
        rows = [[run, s["llava"]["tower"], s["llava"]["connector"], s["llava"]["llm"], s["llava"]["template"], s["llava"]["samples"],
                 s["llava"]["steps"], s["fingerprint"], commit(s)] for run, s in llava.items()]
        parts.append(table("LLaVA runs (scored on stage 2)", ["run", "tower", "connector", "LLM", "template", "stage-2 samples",
                                                              "stage-2 steps", "stage fingerprint", "commit"], rows,
                           left=(0, 1, 2, 3, 4, 7, 8)))
    write_page(out, "metrics", "".join(parts))


def commit(summary: dict) -> str:
    git = summary.get("git") or {}
    return (git.get("commit") or "")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")


# ---- a run's settings and summary ----------------------------------------------------------------
def backbone_line(name: str, entry: dict) -> str:
    """``name``: family, path, pooling, revision (``not pinned`` when absent) and the other keys."""
    rest = {k: v for k, v in entry.items() if k not in ("kind", "family", "path", "pooling", "revision") and v is not None}
    parts = [f"{entry.get('family', '?')} {entry.get('path', '')}", f"pooling {entry.get('pooling') or 'default'}",
             f"revision {entry.get('revision') or 'not pinned'}", *[f"{k} {setting(v)}" for k, v in rest.items()]]
    return f"{name}: " + ", ".join(parts)


def settings_rows(summary: dict) -> list[list]:
    """The run's hyper-parameters from its ``eval.json``: backbones, data, every align setting."""
    b = summary["backbones"]
    rows = [["vision", backbone_line(summary["vision"], b["vision"])], ["text", backbone_line(summary["text"], b["text"])]]
    for d in summary["data"]["sources"]:
        extra = f", extra positive {d['extra_caption_source']}" if d.get("extra_caption_source") else ""
        rows.append(["data", f"{d['dataset']}: positive {d['caption_source']}{extra}"])
    rows.append(["training", f"{summary['align']['steps']:,} steps over {summary['data']['train_pairs']:,} pairs"])
    rows += [[f"align.{k}", setting(v)] for k, v in summary["align"]["settings"].items()]
    return rows


def settings_table(summary: dict, caption: str = "hyper-parameters", per_row: int = 4) -> str:
    """:func:`settings_rows`: backbones, data and training one per row, the align settings
    ``per_row`` name/value pairs a row."""
    rows = settings_rows(summary)
    lines = [r for r in rows if not r[0].startswith("align.")]
    align = [[r[0].removeprefix("align."), r[1]] for r in rows if r[0].startswith("align.")]
    n = math.ceil(len(align) / per_row)
    grid = []
    for i in range(n):  # column-major: read down, then across
        grid.append([x for j in range(per_row) for x in (align[j * n + i] if j * n + i < len(align) else ["", ""])])
    span = 2 * per_row - 1
    body = "".join(f"<tr><th class='l'>{html.escape(k)}</th><td class='l' colspan='{span}'>{fmt(v)}</td></tr>" for k, v in lines)
    body += f"<tr><th class='l' colspan='{2 * per_row}'>align settings (the run's <code>align:</code> over the global one)</th></tr>"
    body += "".join("<tr>" + "".join(f"<td class='{'k' if j % 2 == 0 else 'l'}'>{fmt(v)}</td>" for j, v in enumerate(r)) + "</tr>"
                    for r in grid)
    return f"<table><caption>{html.escape(caption)}</caption><tbody>{body}</tbody></table>"


def setting(v) -> str:
    """A config value as written in the config (1e-05, not 0.0000; true, not True)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(setting(x) for x in v)
    return "–" if v is None else str(v)


def holdout_table(holdout: dict | None) -> str:
    if not holdout:
        return "<p class='sub'>No held-out pairs (set <code>holdout</code> in the run's <code>align:</code>).</p>"
    rows = [["image → caption R@1", holdout["image_to_text_r1"], holdout["chance"]],
            ["caption → image R@1", holdout["text_to_image_r1"], holdout["chance"]]]
    return table(f"held-out pairs ({holdout['pairs']:,}, never trained on)", ["retrieval", "value", "chance"], rows,
                 cell_class=lambda n, j: ("above" if rows[n][1] > rows[n][2] else "below") if j == 1 else "")


def summary_fragment(run: str, summary: dict, manifests: list[dict]) -> str:
    """A run's landing-page section (an HTML fragment): metrics with chance, held-out R@1, the data
    funnel and the hyper-parameters, all read from ``eval.json`` and the data manifests."""
    a, d = summary["align"], summary["data"]
    head = (f"<h2>Run <code>{html.escape(run)}</code>: {html.escape(summary['vision'])} + {html.escape(summary['text'])}</h2>"
            f"<p class='sub'>{a['steps']:,} steps over {d['train_pairs']:,} training pairs · config fingerprint "
            f"<code>{html.escape(summary['fingerprint'])}</code> · commit <code>{html.escape(commit(summary) or 'unknown')}</code>"
            f" · evaluated {html.escape(summary.get('created', ''))}</p>")
    left = metrics_table(summary["tasks"], "evaluation metrics (fractions; green: above chance)")
    right = (holdout_table(a.get("holdout"))
             + funnel_table(manifests, d["sources"], d["train_pairs"], a["settings"], "data funnel (rows)"))
    return (f"<div class='sailflow'>{head}<div class='cols'><div>{left}</div><div>{right}</div></div>"
            f"{settings_table(summary)}</div>")


def summary_html(run: str, summary: dict, manifests: list[dict], out: str | Path) -> None:
    """The fragment of :func:`summary_fragment` with its style, written atomically. The report's
    workflow description includes it (``.. raw:: html``), so the landing page shows it; it also
    opens on its own as a report item."""
    with atomic_path(out) as tmp:
        tmp.write_text(f"<style>{STYLE}{LANDING_STYLE}</style>\n{summary_fragment(run, summary, manifests)}\n", encoding="utf-8")
