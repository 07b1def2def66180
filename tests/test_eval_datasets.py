"""Loading evaluation sets from the on-disk formats users have (fixture files written here)."""

from __future__ import annotations

import json

import pytest

from sailflow.evaluate.datasets import EvalDataError, class_csv, class_folders, coco_karpathy, flickr_karpathy, mmvp_vlm, winoground


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_class_folders_and_csv(tmp_path):
    for c, names in {"zebra": ["b.jpg", "a.png"], "cat": ["c.JPG"]}.items():
        for n in names:
            _touch(tmp_path / "val" / c / n)
    _touch(tmp_path / "val" / "cat" / "notes.txt")
    d = class_folders(tmp_path / "val")
    assert d.class_names == ["cat", "zebra"]
    assert [p.name for p in d.images] == ["c.JPG", "a.png", "b.jpg"] and d.labels == [0, 1, 1]
    (tmp_path / "l.csv").write_text("path,label\nimg/1.jpg,dog\nimg/2.jpg,ant\n")
    c = class_csv(tmp_path / "l.csv")
    assert c.class_names == ["ant", "dog"] and c.labels == [1, 0] and c.images[0] == tmp_path / "img/1.jpg"
    with pytest.raises(EvalDataError, match=r"l\.csv:3: label 'ant' is not a configured class"):
        class_csv(tmp_path / "l.csv", class_names=["dog"])


def test_coco_and_flickr_karpathy_keep_every_caption(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}],
            "annotations": [{"id": 1, "image_id": 3, "caption": "a1"}, {"id": 2, "image_id": 7, "caption": "b1"},
                            {"id": 3, "image_id": 3, "caption": "a2"}, {"id": 4, "image_id": 3, "caption": "a3"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    r = coco_karpathy(tmp_path / "coco.json", tmp_path / "val2014")
    assert [p.name for p in r.images] == ["b.jpg", "a.jpg"]
    assert r.captions == ["b1", "a1", "a2", "a3"] and r.text_image == [0, 1, 1, 1]
    (tmp_path / "f.txt").write_text("image,caption\n1.jpg,a dog, running.\n2.jpg,cat\n1.jpg,another, with comma\n")
    f = flickr_karpathy(tmp_path / "f.txt", tmp_path / "imgs")
    assert [p.name for p in f.images] == ["1.jpg", "2.jpg"]
    assert f.captions == ["a dog, running.", "another, with comma", "cat"] and f.text_image == [0, 0, 1]
    (tmp_path / "bad.txt").write_text("h\n1.png,x\n")
    with pytest.raises(EvalDataError, match=r"bad\.txt:2"):
        flickr_karpathy(tmp_path / "bad.txt", tmp_path)


def test_winoground_and_mmvp_layouts(tmp_path):
    w = tmp_path / "wino"
    w.mkdir()
    (w / "examples.jsonl").write_text(json.dumps({"id": 0, "caption_0": "an adult beside a child", "caption_1": "a child beside an adult",
                                                  "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "collapsed_tag": "Object"}) + "\n")
    p = winoground(w)
    assert p.images0 == [w / "images" / "ex_0_img_0.png"] and p.captions1 == ["a child beside an adult"] and p.groups == ["Object"]
    m = tmp_path / "MMVP_VLM"
    m.mkdir()
    (m / "Questions.csv").write_text('"Question ID","Type","Statement"\n1,Color,the cup is red\n2,Color,the cup is blue\n')
    q = mmvp_vlm(m)
    assert q.images0 == [m / "MLLM_VLM Images" / "Color" / "1.jpg"] and q.images1 == [m / "MLLM_VLM Images" / "Color" / "2.jpg"]
    assert q.captions0 == ["a photo of the cup is red"] and q.groups == ["Color"]
    (m / "Questions.csv").write_text('"Question ID","Type","Statement"\n1,Color,x\n')
    with pytest.raises(EvalDataError, match="not pairs"):
        mmvp_vlm(m)
