"""OCR regions as a data stage (REMGCL's local term): Tesseract's TSV parsed into line and word regions
(hand-computed), and the `ocr` rule run for real on rendered text, its output read by the trainer's reader,
a LLaVA stage waiting for it.

The rule runs Tesseract (Debian's tesseract-ocr). Without it the workflow test is skipped, unless
SAILFLOW_TEST_SLURM=install (what CI sets: the tests may install Debian packages as root), which installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from PIL import Image, ImageDraw, ImageFont

from conftest import job_inputs, planned_jobs, repo_config, snakemake, write_config

HEADER = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"


def _tsv(*rows) -> str:
    return HEADER + "".join("\t".join(str(x) for x in r) + "\n" for r in rows)


def test_tesseract_tsv_becomes_line_and_word_regions():
    from sailflow.llava.ocr import parse_tesseract_tsv

    tsv = _tsv(
        (1, 1, 0, 0, 0, 0, 0, 0, 320, 120, -1, ""),  # page, block, line rows: no text
        (4, 1, 1, 1, 1, 0, 21, 27, 133, 21, -1, ""),
        (5, 1, 1, 1, 1, 1, 21, 29, 69, 19, 96.9, "STOP"),
        (5, 1, 1, 1, 1, 2, 98, 27, 56, 21, 96.1, "here"),
        (5, 1, 1, 1, 1, 3, 160, 30, 10, 10, 12.0, "~"),  # below min_conf: dropped
        (5, 1, 2, 1, 1, 1, 41, 79, 44, 19, 96.5, "exit"),
        (5, 1, 2, 1, 1, 2, 93, 79, 30, 19, 95.8, "42"),
        (5, 1, 3, 1, 1, 1, 5, 5, 9, 9, 90.0, "  "),  # blank text: dropped
        (5, 1, 1, 1, 2, 1, 21, 60, 40, 15, 61.0, 'say "hi'),  # an unmatched quote is text, not CSV quoting
    )
    assert parse_tesseract_tsv(tsv, min_conf=60, level="line") == [  # lines in the order they first appear
        {"text": "STOP here", "box": [21, 27, 154, 48]},  # the hull: x 21 .. 98 + 56, y 27 .. 27 + 21
        {"text": "exit 42", "box": [41, 79, 123, 98]},
        {"text": 'say "hi', "box": [21, 60, 61, 75]},
    ]
    words = parse_tesseract_tsv(tsv, min_conf=60, level="word")
    assert [w["text"] for w in words] == ["STOP", "here", "exit", "42", 'say "hi']
    assert words[0]["box"] == [21, 29, 90, 48] and words[3]["box"] == [93, 79, 123, 98]
    assert [w["text"] for w in parse_tesseract_tsv(tsv, min_conf=96.5, level="word")] == ["STOP", "exit"]
    with pytest.raises(ValueError, match="level"):
        parse_tesseract_tsv(tsv, 60, level="block")


def test_a_missing_tesseract_is_a_clear_error(tmp_path):
    from sailflow.llava.ocr import OcrError, add_ocr_regions

    with pytest.raises(OcrError, match=r"records.json: the OCR program 'no-such-ocr' is not on PATH; install Tesseract"):
        add_ocr_regions([], tmp_path, "records.json", {"executable": "no-such-ocr"})


# ---- the rule, with Tesseract ---------------------------------------------------------------------------
def _tesseract() -> str:
    found = shutil.which("tesseract")
    if found is None and os.environ.get("SAILFLOW_TEST_SLURM") == "install":
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "tesseract-ocr", "tesseract-ocr-eng"]
        if subprocess.run(install, capture_output=True, env=env, timeout=900).returncode != 0:  # no package lists yet
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=900)
            subprocess.run(install, check=True, capture_output=True, env=env, timeout=900)
        found = shutil.which("tesseract")
    if found is None:
        pytest.skip("needs Tesseract (apt-get install tesseract-ocr); SAILFLOW_TEST_SLURM=install installs it")
    return found


def _sign(path, lines) -> list[list[int]]:
    """A white image with dark text lines; returns each line's drawn box (PIL's text bbox)."""
    img = Image.new("RGB", (320, 140), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=28)
    boxes = []
    for (x, y), text in lines:
        d.text((x, y), text, fill=(20, 20, 20), font=font)
        boxes.append(list(d.textbbox((x, y), text, font=font)))
    img.save(path)
    return boxes


def _conv(q="<image>\nWhat does the sign say?", a="A word."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.mark.e2e
def test_ocr_rule_gives_records_their_text_regions_and_a_stage_waits_for_it(workdir):
    from sailflow.llava.data import read_records

    _tesseract()
    images = workdir / "data/signs"
    images.mkdir(parents=True)
    drawn = _sign(images / "two_lines.png", [((20, 20), "STOP here"), ((40, 80), "exit 42")])
    Image.new("RGB", (120, 80), (255, 255, 255)).save(images / "blank.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = [
        {"id": "two", "image": "two_lines.png", "conversations": _conv()},
        {"id": "two-again", "image": "two_lines.png", "conversations": _conv()},  # one OCR pass per image
        {"id": "blank", "image": "blank.png", "conversations": _conv()},
        {"id": "broken", "image": "broken.png", "conversations": _conv()},
        {"id": "given", "image": "blank.png", "conversations": _conv(), "ocr": [{"text": "kept", "box": [1, 2, 3, 4]}]},
        {"id": "text", "conversations": _conv("Is a square a colour or a shape?", "shape")},
    ]
    (workdir / "data/signs.json").write_text(json.dumps(records))
    cfg = repo_config()
    cfg["ocr_sets"] = {"signs": {"json": "data/signs.json", "images": "data/signs", "threads": 2}}
    write_config(workdir, cfg)

    # a stage trained on the set's output waits for it, and takes the set's images
    cfg["llava_runs"]["remgcl_demo"]["finetune"]["data"] = [{"json": "results/ocr/signs.json"}]
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", "results/remgcl_demo/llava/finetune/config.json")
    assert planned_jobs(proc.stdout)["ocr"] == 1
    assert "results/ocr/signs.json" in job_inputs(proc.stdout, "llava_finetune")
    assert "data/signs.json" in job_inputs(proc.stdout, "ocr")

    snakemake(workdir, "--cores", "2", "results/ocr/signs.json")
    out = {r["id"]: r for r in json.loads((workdir / "results/ocr/signs.json").read_text())}
    assert list(out) == [r["id"] for r in records]  # every record, in order
    regions = out["two"]["ocr"]
    assert [r["text"] for r in regions] == ["STOP here", "exit 42"]
    for got, want in zip(regions, drawn):  # Tesseract's boxes hug the ink; PIL's include the line's ascent
        assert all(abs(g - w) <= 6 for g, w in zip(got["box"], want)), (got, want)
    assert out["two-again"]["ocr"] == regions
    assert out["blank"]["ocr"] == [] and "ocr" not in out["broken"]
    assert out["given"]["ocr"] == [{"text": "kept", "box": [1, 2, 3, 4]}]  # overwrite: false
    assert out["text"] == records[-1]
    log = (workdir / "logs/ocr/signs.log").read_text()
    counts = json.loads(log.split("[ocr] signs: ")[1].splitlines()[0])
    assert counts == {"images": 3, "kept": 1, "no_text": 1, "ocr_failed": 1, "regions": 4, "text_only": 1, "with_text": 2}
    assert "broken.png" in log.split("[ocr] failed: ")[1]

    # an engine that fails on every image (a language not installed) stops the job; nothing is written
    cfg["ocr_sets"]["klingon"] = {"json": "data/signs.json", "images": "data/signs", "lang": "tlh"}
    write_config(workdir, cfg)
    proc = snakemake(workdir, "--cores", "1", "results/ocr/klingon.json", check=False)
    assert proc.returncode != 0 and not (workdir / "results/ocr/klingon.json").exists()
    assert "data/signs.json: Tesseract failed on all 3 images" in (workdir / "logs/ocr/klingon.log").read_text()

    # the trainer's reader takes the output as it is
    read, drops = read_records(workdir / "results/ocr/signs.json", images)
    by_id = {r.id: r for r in read}
    assert [r.text for r in by_id["two"].ocr] == ["STOP here", "exit 42"] and not drops
