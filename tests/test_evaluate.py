"""Evaluation tasks end to end in the library: sets on disk -> a model -> metrics, checked against
values worked out by hand; stored features; prompts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sailflow.align.heads import AlignmentHead
from sailflow.embeddings import EmbeddingMismatch
from sailflow.evaluate import tasks
from sailflow.evaluate.datasets import EvalDataError
from sailflow.evaluate.features import HeadOverFeatures, load_features, save_features
from sailflow.evaluate.prompts import CIFAR_TEMPLATES, classnames, prompts, templates
from sailflow.evaluate.kinds.retrieval import chance
from sailflow.evaluate.kinds.winoground import winoground_scores
from sailflow.evaluate.kinds.zeroshot import classifier_weights

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourModel:
    """A hand-made model: an image embeds as its mean RGB; a text as the colours it names
    (the first colour word weighs 1, a later one 0.5), so every score can be worked out by hand."""

    def encode_image(self, paths):
        x = torch.stack([torch.tensor(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32).mean((0, 1))) for p in paths])
        return F.normalize(x, dim=-1)

    def encode_text(self, texts):
        out = []
        for t in texts:
            v, w = torch.zeros(3), 1.0
            for word in t.replace(".", " ").split():
                if word in COLOURS:
                    v += w * torch.tensor(COLOURS[word], dtype=torch.float32) / 255
                    w = 0.5
            out.append(v if v.any() else torch.ones(3))
        return F.normalize(torch.stack(out), dim=-1)


def _img(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), rgb).save(path)
    return path


def test_zeroshot_task_from_class_folders(tmp_path):
    root = tmp_path / "val"
    _img(root / "blue" / "1.png", COLOURS["blue"])
    _img(root / "red" / "1.png", COLOURS["red"])
    _img(root / "red" / "2.png", (250, 10, 10))
    _img(root / "green" / "1.png", COLOURS["blue"])  # a mislabelled image: predicted blue
    spec = {"kind": "zeroshot", "folder": str(root), "templates": ["a {c} thing.", "the {c}."]}
    r = tasks.run(ColourModel(), spec)
    assert r["metrics"]["acc1"] == pytest.approx(3 / 4)
    assert math.isnan(r["metrics"]["acc5"])  # 3 classes
    assert r["metrics"]["mean_per_class_recall"] == pytest.approx((1 + 0 + 1) / 3)  # blue, green, red
    assert r["counts"] == {"images": 4, "classes": 3, "templates": 2}
    assert r["chance"]["acc1"] == pytest.approx(1 / 3)
    # class names given in config replace the (sorted) folder names, by position
    spec_named = {**spec, "classnames": ["blue", "green", "red"]}
    assert tasks.run(ColourModel(), spec_named)["metrics"] == r["metrics"]
    with pytest.raises(EvalDataError, match="3 class folders but eval_tasks.x.classnames has 2 names"):
        tasks.load({**spec, "classnames": ["a", "b"]}, "x")


def test_prompts_are_class_major_and_weights_average_per_class():
    p = prompts(["cat", "dog"], ["a {c}.", "the {c}."])
    assert p == ["a cat.", "the cat.", "a dog.", "the dog."]
    e = torch.tensor([[2.0, 0], [0, 3.0], [1.0, 0], [1.0, 0]])  # cat: x and y prompts; dog: both x
    w = classifier_weights(e, 2)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(w, torch.tensor([[r, 1.0], [r, 0.0]]))


def test_named_prompt_sets_and_errors():
    assert len(templates("openai_imagenet")) == 80 and templates("openai_imagenet")[0] == "a bad photo of a {c}."
    assert templates("cifar") == CIFAR_TEMPLATES and len(CIFAR_TEMPLATES) == 18
    assert len(templates("simple_imagenet")) == 7
    names = classnames("imagenet1k")
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet paper"
    with pytest.raises(ValueError, match=r"eval_tasks.t.templates: every template needs the placeholder \{c\}"):
        templates(["a photo of a {}."], "eval_tasks.t.templates")
    with pytest.raises(ValueError, match="unknown template set 'imagenet'"):
        templates("imagenet")


def test_retrieval_task_from_coco_json_with_unequal_caption_counts(tmp_path):
    imgs = tmp_path / "images"
    for name in ("r", "g", "b"):
        _img(imgs / f"{name}.png", COLOURS[{"r": "red", "g": "green", "b": "blue"}[name]])
    coco = {"images": [{"id": 1, "file_name": "r.png"}, {"id": 2, "file_name": "g.png"}, {"id": 3, "file_name": "b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "red"}, {"id": 2, "image_id": 1, "caption": "blue and red"},
                            {"id": 3, "image_id": 2, "caption": "green"},
                            {"id": 4, "image_id": 3, "caption": "green with blue"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    spec = {"kind": "retrieval", "format": "coco", "annotations": str(tmp_path / "captions.json"), "images": str(imgs)}
    r = tasks.run(ColourModel(), spec, settings={"recall_k": (1, 2), "report_examples": 3})
    m = r["metrics"]
    # text -> image: "red" -> r (hit); "blue and red" -> b first (miss@1), r second; "green" -> g; "green with blue" -> g (miss@1), b second
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 4) and m["image_retrieval_recall@2"] == pytest.approx(1.0)
    # image -> text: r: "red" first (hit); g: "green" and "green with blue" (.894) -> "green" first (hit);
    # b: "blue and red" (.894, image r's) first, "green with blue" (.447, its own) second: miss@1, hit@2
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3) and m["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert r["counts"] == {"images": 3, "captions": 4}
    assert [e["retrieved"][0]["correct"] for e in r["examples"]] == [True, True, False]
    # chance: k/I for text -> image; 1 - C(T-n, k)/C(T, k) averaged over images for image -> text
    assert r["chance"]["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert r["chance"]["text_retrieval_recall@2"] == pytest.approx((1 - (2 / 4) * (1 / 3) + 2 * (1 - (3 / 4) * (2 / 3))) / 3)


def test_retrieval_chance_matches_a_random_model():
    text_image = torch.tensor([0, 0, 1, 2, 2, 2])
    expected = chance(text_image, 3, ks=(1, 2))
    g = torch.Generator().manual_seed(0)
    from sailflow.evaluate.kinds.retrieval import retrieval_metrics

    runs = [retrieval_metrics(torch.rand(6, 3, generator=g), text_image, ks=(1, 2)) for _ in range(4000)]
    for k, v in expected.items():
        assert sum(r[k] for r in runs) / len(runs) == pytest.approx(v, abs=0.01)


def test_winoground_and_mmvp_tasks_from_their_layouts(tmp_path):
    w = tmp_path / "wino"
    _img(w / "images" / "ex_0_img_0.png", COLOURS["red"])
    _img(w / "images" / "ex_0_img_1.png", COLOURS["blue"])
    _img(w / "images" / "ex_1_img_0.png", COLOURS["green"])
    _img(w / "images" / "ex_1_img_1.png", COLOURS["green"])  # identical images: every image comparison ties
    rows = [{"id": 0, "caption_0": "red over blue", "caption_1": "blue over red", "image_0": "ex_0_img_0", "image_1": "ex_0_img_1",
             "collapsed_tag": "Object"},
            {"id": 1, "caption_0": "green", "caption_1": "green and red", "image_0": "ex_1_img_0", "image_1": "ex_1_img_1",
             "collapsed_tag": "Relation"}]
    (w / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = tasks.run(ColourModel(), {"kind": "winoground", "root": str(w)})["metrics"]
    # example 0: all right. example 1: text needs s(c1,i1) > s(c0,i1): .894 < 1 -> wrong; image: ties -> wrong
    assert (m["text"], m["image"], m["group"]) == (0.5, 0.5, 0.5)
    assert m["group/Object"] == 1.0 and m["group/Relation"] == 0.0

    q = tmp_path / "MMVP_VLM"
    _img(q / "MLLM_VLM Images" / "Color" / "1.jpg", COLOURS["red"])
    _img(q / "MLLM_VLM Images" / "Color" / "2.jpg", COLOURS["blue"])
    _img(q / "MLLM_VLM Images" / "Color" / "3.jpg", COLOURS["green"])
    _img(q / "MLLM_VLM Images" / "Color" / "4.jpg", COLOURS["green"])
    (q / "Questions.csv").write_text('"Question ID","Type","Statement"\n1,Color,red\n2,Color,blue\n3,Color,green\n4,Color,green\n')
    r = tasks.run(ColourModel(), {"kind": "mmvp", "root": str(q)})
    # pair 1 right; pair 2: identical images and statements tie -> both pick image 2 -> statement 3 wrong
    assert r["metrics"] == {"average": 0.5, "pattern/Color": 0.5}
    assert tasks.files_of({"kind": "mmvp", "root": "m"}) == ["m/Questions.csv", "m/MLLM_VLM Images"]


def test_winoground_group_scores_by_tag():
    s = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.1, 0.9], [0.9, 0.1]], [[0.9, 0.1], [0.2, 0.8]]])
    m = winoground_scores(s, ["A", "A", "B"])
    assert m["group"] == pytest.approx(2 / 3) and m["group/A"] == 0.5 and m["group/B"] == 1.0


def test_head_over_stored_features_equals_the_head_on_the_features(tmp_path):
    torch.manual_seed(0)
    head = AlignmentHead(6, 5, dim=4, head="star", width_factor=2).eval()
    img = torch.randn(3, 6).half()
    txt = torch.randn(2, 5).half()
    keys_i, keys_t = ["a.png", "b.png", "c.png"], ["one", "two"]
    save_features(tmp_path / "i.safetensors", img, keys_i, {"backbone": "v"})
    save_features(tmp_path / "t.safetensors", txt, keys_t, {"backbone": "t"})
    m = HeadOverFeatures(head, keys_i, load_features(tmp_path / "i.safetensors", keys_i), keys_t,
                         load_features(tmp_path / "t.safetensors", keys_t), batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(m.encode_image(["c.png", "a.png"]), F.normalize(head.encode_image(img[[2, 0]].float()), dim=-1))
        torch.testing.assert_close(m.encode_text(["two"]), F.normalize(head.encode_text(txt[[1]].float()), dim=-1))
    with pytest.raises(EmbeddingMismatch, match=r"i\.safetensors: features of another version"):
        load_features(tmp_path / "i.safetensors", ["a.png", "c.png", "b.png"])  # same set, another order
    with pytest.raises(KeyError, match="no stored feature for 'd.png'"):
        m.encode_image(["d.png"])


def test_an_unreadable_evaluation_image_is_named(tmp_path):
    from sailflow.data.shards import ImageFiles

    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match=r"bad\.png: cannot read this image"):
        ImageFiles([tmp_path / "bad.png"], lambda im: im)[0]
    with pytest.raises(EvalDataError, match="not found"):
        tasks.load({"kind": "zeroshot", "folder": str(tmp_path / "missing"), "templates": ["a {c}."]})
