"""OCR regions for LLaVA records, computed once as a data stage (REMGCL's local term reads them).

REMGCL runs PaddleOCR inside every training step; here the regions are computed ahead of training by the
``ocr`` rule and stored with each record, in the ``ocr`` field the trainer reads:
``[{"text": ..., "box": [x0, y0, x1, y1]}]`` in pixels of the image file. The engine is Tesseract (Debian's
``tesseract-ocr``), run as a program once per image with ``--psm`` sparse text by default; its TSV output
gives word boxes with confidences, grouped into lines (PaddleOCR's regions are text lines) or kept as words.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sailflow.llava.remgcl import parse_ocr


class OcrError(RuntimeError):
    pass


def parse_tesseract_tsv(tsv: str, min_conf: float, level: str = "line") -> list[dict]:
    """Regions from Tesseract's ``tsv`` output: its words (level 5) with text and confidence >= ``min_conf``,
    one region per word (``level="word"``) or per text line (``"line"``: the words of one (block, paragraph,
    line) joined by spaces, the box their hull). Boxes ``[x0, y0, x1, y1]``, x1 and y1 exclusive."""
    if level not in ("line", "word"):
        raise ValueError(f"level must be 'line' or 'word', not {level!r}")
    rows = csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE)
    lines: dict[tuple, list[tuple[str, list[int]]]] = {}
    for r in rows:
        text = (r.get("text") or "").strip()
        if r.get("level") != "5" or not text or float(r["conf"]) < min_conf:
            continue
        x, y, w, h = (int(r[k]) for k in ("left", "top", "width", "height"))
        key = (r["block_num"], r["par_num"], r["line_num"]) if level == "line" else (r["block_num"], r["par_num"], r["line_num"], r["word_num"])
        lines.setdefault(key, []).append((text, [x, y, x + w, y + h]))
    out = []
    for words in lines.values():
        boxes = [b for _, b in words]
        out.append({"text": " ".join(t for t, _ in words),
                    "box": [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]})
    return out


def find_tesseract(executable: str, where: str) -> str:
    """The Tesseract program's path, or an error that says how to get it."""
    found = shutil.which(executable)
    if found is None:
        raise OcrError(f"{where}: the OCR program {executable!r} is not on PATH; install Tesseract (Debian/Ubuntu: "
                       "apt-get install tesseract-ocr) or set `executable:`, or give the records an `ocr` field")
    return found


def tesseract(path: str | Path, executable: str, lang: str = "eng", psm: int = 11, timeout: float = 120) -> str:
    """Tesseract's TSV for one image (one OpenMP thread: the caller runs several images at once)."""
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    proc = subprocess.run([executable, str(path), "stdout", "-l", lang, "--psm", str(psm), "tsv"], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise OcrError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}")
    return proc.stdout


def add_ocr_regions(records: list, image_root: str | Path, source: str, settings: dict, threads: int = 1, progress=None):
    """``records`` (a LLaVA record list) with ``ocr`` regions on every record with an image, and the counts.

    ``settings``: executable, lang, psm, min_conf, level, overwrite (records that already carry ``ocr``
    keep it unless set). Each image is read once, ``threads`` at a time; ``progress`` (a tqdm bar) counts
    them. An image Tesseract cannot read is a counted failure (``ocr_failed``, the first few named in
    ``failures``), its record kept without regions; a record that is not an object, or an image that does
    not exist, is an error naming ``source`` and the record."""
    exe = find_tesseract(settings.get("executable", "tesseract"), source)
    root = Path(image_root)
    todo: dict[Path, list[int]] = {}
    counts = Counter()
    for k, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise OcrError(f"{source}: record {k} is not an object")
        if not rec.get("image"):
            counts["text_only"] += 1
            continue
        if "ocr" in rec and not settings.get("overwrite", False):
            parse_ocr(rec, source)  # kept as it is: it must be well-formed
            counts["kept"] += 1
            continue
        path = (root / rec["image"]).resolve()
        if not path.is_file():
            raise OcrError(f"{source}: record {rec.get('id', k)!r}: image {path} does not exist (images: {root})")
        todo.setdefault(path, []).append(k)

    def one(path: Path):
        try:
            tsv = tesseract(path, exe, settings.get("lang", "eng"), int(settings.get("psm", 11)))
        except (OcrError, subprocess.TimeoutExpired) as e:
            return path, None, str(e)
        return path, parse_tesseract_tsv(tsv, float(settings.get("min_conf", 60)), settings.get("level", "line")), None

    out = [dict(r) for r in records]
    failures = []
    if progress is not None:
        progress.reset(total=len(todo))  # the images to read (not those of records that keep their regions)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for path, regions, error in pool.map(one, todo):
            if regions is None:
                counts["ocr_failed"] += len(todo[path])
                if len(failures) < 10:
                    failures.append(f"{path}: {error}")
            for k in todo[path]:
                if regions is None:
                    out[k].pop("ocr", None)
                else:
                    out[k]["ocr"] = regions
                    counts["with_text" if regions else "no_text"] += 1
                    counts["regions"] += len(regions)
            if progress is not None:
                progress.update(1)
    counts["images"] = len(todo)
    if todo and counts["ocr_failed"] == sum(len(v) for v in todo.values()):  # the engine, not the images (e.g. a language not installed)
        raise OcrError(f"{source}: Tesseract failed on all {len(todo)} images; the first: {failures[0]}")
    return out, dict(counts), failures
