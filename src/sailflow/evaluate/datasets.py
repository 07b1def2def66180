"""Evaluation datasets in the formats users already have on disk.

    class folders        root/<class name>/<image>            (ImageNet val layout)
    class CSV            path,label rows (paths relative to the CSV)
    COCO Karpathy JSON   {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}
    Flickr Karpathy txt  a header line, then "<name>.jpg,<caption>" lines (split on ".jpg,")
    Winoground           examples.jsonl (id, caption_0, caption_1, image_0, image_1) + images/<name>.png
    MMVP-VLM             Questions.csv ("Question ID", "Type", "Statement") + "MLLM_VLM Images"/<Type>/<id>.jpg

Every loader returns plain paths and strings; a malformed file raises :class:`EvalDataError`
naming the file and row.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

MMVP_IMAGE_FOLDER = "MLLM_VLM Images"  # the official code's and the HF repo's name (the README says otherwise)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class EvalDataError(ValueError):
    pass


@dataclass
class Classification:
    images: list[Path]
    labels: list[int]
    class_names: list[str]


@dataclass
class Retrieval:
    images: list[Path]
    captions: list[str]
    text_image: list[int]  # caption t belongs to image text_image[t]


@dataclass
class Pairs:
    """2x2 tasks: example k has images (images0[k], images1[k]) and captions (captions0[k], captions1[k]);
    caption j belongs to image j. ``groups[k]``: Winoground's collapsed tag or MMVP's pattern."""

    images0: list[Path]
    images1: list[Path]
    captions0: list[str]
    captions1: list[str]
    groups: list[str]


def _require(path: Path) -> Path:
    if not path.exists():
        raise EvalDataError(f"{path}: not found")
    return path


def class_folders(root: str | Path) -> Classification:
    """Sub-folder names are the class names (sorted, as torchvision's ImageFolder)."""
    root = _require(Path(root))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise EvalDataError(f"{root}: no class sub-folders")
    images, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images += files
        labels += [i] * len(files)
    return Classification(images, labels, classes)


def class_csv(path: str | Path, class_names: list[str] | None = None, path_col: str = "path", label_col: str = "label") -> Classification:
    """Rows of (image path, class name); classes in ``class_names`` order, else sorted."""
    path = _require(Path(path))
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and (path_col not in rows[0] or label_col not in rows[0]):
        raise EvalDataError(f"{path}: needs columns {path_col!r} and {label_col!r}, has {list(rows[0])}")
    names = class_names or sorted({r[label_col] for r in rows})
    index = {c: i for i, c in enumerate(names)}
    images, labels = [], []
    for n, r in enumerate(rows, start=2):
        if r[label_col] not in index:
            raise EvalDataError(f"{path}:{n}: label {r[label_col]!r} is not a configured class")
        images.append(path.parent / r[path_col])
        labels.append(index[r[label_col]])
    return Classification(images, labels, names)


def coco_karpathy(path: str | Path, image_root: str | Path) -> Retrieval:
    """All captions of each image, images in file order (CLIP_benchmark's mscoco_captions)."""
    path = _require(Path(path))
    data = json.loads(path.read_text())
    try:
        images = [(im["id"], im["file_name"]) for im in data["images"]]
        by_image: dict = {i: [] for i, _ in images}
        for a in data["annotations"]:
            if a["image_id"] not in by_image:
                raise EvalDataError(f"{path}: annotation {a.get('id')} refers to unknown image {a['image_id']}")
            by_image[a["image_id"]].append(a["caption"])
    except KeyError as e:
        raise EvalDataError(f"{path}: not COCO captions format (missing key {e})") from None
    return _retrieval([(Path(image_root) / name, by_image[i]) for i, name in images], path)


def flickr_karpathy(path: str | Path, image_root: str | Path) -> Retrieval:
    """``<name>.jpg,<caption>`` lines after one header line; captions grouped by image in file order."""
    path = _require(Path(path))
    groups: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        if not line.strip():
            continue
        if ".jpg," not in line:
            raise EvalDataError(f"{path}:{n}: expected '<image>.jpg,<caption>'")
        name, caption = line.split(".jpg,", 1)
        groups.setdefault(name + ".jpg", []).append(caption.strip())
    return _retrieval([(Path(image_root) / k, v) for k, v in groups.items()], path)


def _retrieval(items: list[tuple[Path, list[str]]], source: Path) -> Retrieval:
    images, captions, index = [], [], []
    for i, (img, caps) in enumerate(items):
        if not caps:
            raise EvalDataError(f"{source}: image {img.name} has no caption")
        images.append(img)
        captions += caps
        index += [i] * len(caps)
    return Retrieval(images, captions, index)


def winoground(root: str | Path) -> Pairs:
    root = Path(root)
    path = _require(root / "examples.jsonl")
    out = Pairs([], [], [], [], [])
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            out.images0.append(root / "images" / f"{ex['image_0']}.png")
            out.images1.append(root / "images" / f"{ex['image_1']}.png")
            out.captions0.append(ex["caption_0"])
            out.captions1.append(ex["caption_1"])
            out.groups.append(ex.get("collapsed_tag", ""))
        except (json.JSONDecodeError, KeyError) as e:
            raise EvalDataError(f"{path}:{n}: not a Winoground example ({e})") from None
    return out


def mmvp_vlm(root: str | Path, image_folder: str = MMVP_IMAGE_FOLDER) -> Pairs:
    """Consecutive Questions.csv rows form a pair (odd id: image 1, even id: image 2); both images
    come from the first row's Type folder, as the official script does. The statement is prefixed
    with "a photo of " (official prompt)."""
    root = Path(root)
    path = _require(root / "Questions.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if len(rows) % 2:
        raise EvalDataError(f"{path}: {len(rows)} statements, not pairs")
    need = {"Question ID", "Type", "Statement"}
    if rows and not need <= set(rows[0]):
        raise EvalDataError(f"{path}: needs columns {sorted(need)}, has {list(rows[0])}")
    out = Pairs([], [], [], [], [])
    for k in range(0, len(rows), 2):
        a, b = rows[k], rows[k + 1]
        folder = root / image_folder / a["Type"]
        out.images0.append(folder / f"{a['Question ID']}.jpg")
        out.images1.append(folder / f"{b['Question ID']}.jpg")
        out.captions0.append("a photo of " + a["Statement"])
        out.captions1.append("a photo of " + b["Statement"])
        out.groups.append(a["Type"])
    return out


# Keys of an eval_tasks entry that choose its texts only (class names, prompts): its image features
# do not depend on them.
