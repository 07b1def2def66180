"""VQAScore (Lin et al. 2024, CLIP-FlanT5's metric): how much a trained LLaVA stage believes an image
shows a text.

    VQAScore(image, text) = exp(mean over the answer tokens of log p(token | image, question, earlier tokens))

for the question ``Does this figure show "{text}"? Please answer yes or no.`` and the answer ``Yes``
followed by the end-of-answer token, teacher-forced: the answer tokens are those the run's template
supervises in training (vicuna_v1: "▁Yes" and ``</s>``), so the score is the geometric mean
``sqrt(P("Yes") * P(</s> | "Yes"))`` as t2v_metrics computes it, not the bare first-token probability.
No generation is involved. Images are preprocessed as in training (``pad`` for LLaVA-1.5 stage 2).

Each image is encoded once and its features are shared by all the texts it is scored against
(``share_image=False`` re-encodes it per pair: benchmarks/llava_generate.py compares the two).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
ANSWER = "Yes"


def _encode_texts(vlm, texts: list[str], question: str, answer: str):
    from sailflow.llava.templates import IMAGE_PLACEHOLDER

    encs = []
    for t in texts:
        conv = [{"from": "human", "value": IMAGE_PLACEHOLDER + "\n" + question.format(t)}, {"from": "gpt", "value": answer}]
        encs.append(vlm.template.encode(conv, has_image=True))
    return encs


def _batch_scores(vlm, encs, feats: torch.Tensor | None, pixels: torch.Tensor | None) -> torch.Tensor:
    import torch

    from sailflow.llava.templates import IGNORE_INDEX

    m, device = vlm.model, vlm.device
    L = max(len(e.input_ids) for e in encs)
    ids = torch.full((len(encs), L), 0, dtype=torch.long, device=device)
    labels = torch.full((len(encs), L), IGNORE_INDEX, dtype=torch.long, device=device)
    mask = torch.zeros(len(encs), L, dtype=torch.bool, device=device)
    for b, e in enumerate(encs):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids, device=device)
        labels[b, : len(e.labels)] = torch.tensor(e.labels, device=device)
        mask[b, : len(e.input_ids)] = True
    with torch.no_grad():
        embeds, attn, labels, pos = m.prepare(ids, mask, labels, pixels, image_features=feats)
        logits = m.language_model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return torch.exp(tok.sum(1) / keep.sum(1))


def vqascore_pairs(vlm, images: list, texts_per_image: list[list[str]], *, question: str = QUESTION, answer: str = ANSWER,
                   batch_size: int = 32, share_image: bool = True, progress=None) -> list[torch.Tensor]:
    """For each image, the VQAScores (float64, in (0, 1]) of its own list of texts."""
    import torch

    if len(images) != len(texts_per_image):
        raise ValueError(f"{len(images)} images for {len(texts_per_image)} text lists")
    out = []
    for image, texts in zip(images, texts_per_image):
        encs = _encode_texts(vlm, texts, question, answer)
        pixels = vlm._pixels([image]).to(vlm.device)
        with torch.no_grad():
            feats = vlm.model.image_features(pixels) if share_image else None
        scores = []
        for i in range(0, len(encs), batch_size):
            chunk = encs[i : i + batch_size]
            if share_image:
                scores.append(_batch_scores(vlm, chunk, feats.expand(len(chunk), -1, -1), None))
            else:
                scores.append(_batch_scores(vlm, chunk, None, pixels.expand(len(chunk), -1, -1, -1)))
        out.append(torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64))
        if progress is not None:
            progress.update(1)
    return out


def vqascore(vlm, images: list, texts: list[str], **kwargs) -> torch.Tensor:
    """``[M images x N texts]`` VQAScore matrix (t2v_metrics' ``Score.forward(images, texts)``)."""
    import torch

    return torch.stack(vqascore_pairs(vlm, images, [texts] * len(images), **kwargs)) if images else torch.zeros(0, len(texts))


def winoground_matrix(vlm, data, **kwargs) -> torch.Tensor:
    """``[N, 2, 2]`` caption x image VQAScores of a Winoground-style set (sailflow.evaluate.datasets.Pairs):
    each image is encoded once and scored against its example's two captions."""
    import torch

    images = [*data.images0, *data.images1]
    texts = [[c0, c1] for c0, c1 in zip(data.captions0, data.captions1)] * 2
    rows = vqascore_pairs(vlm, images, texts, **kwargs)
    n = len(data.images0)
    s = torch.zeros(n, 2, 2, dtype=torch.float64)
    for k in range(n):
        s[k, :, 0] = rows[k]  # image 0 against caption 0, caption 1
        s[k, :, 1] = rows[n + k]
    return s


# ---- the `vqascore` benchmark kind (llava_eval_tasks) -----------------------------------------------
KEYS = {
    "kind": "vqascore",
    "task": "a Winoground-style entry under eval_tasks: (kind winoground): text, image and group scores from VQAScores",
    "images": "text-to-image: a folder of images ...",
    "prompts": "... and a CSV with columns image (a file in `images`) and prompt: one VQAScore per row",
    "question": f"the question template (default {QUESTION!r})",
    "answer": f"the answer whose probability is the score (default {ANSWER!r})",
}


def check_spec(spec: dict, name: str, eval_tasks: dict) -> None:
    """A vqascore entry names a Winoground-style task or gives images + prompts; unknown keys are errors."""
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ValueError(f"llava_eval_tasks.{name}: unknown key(s) {unknown} for a vqascore task (its keys: {sorted(KEYS)})")
    if ("task" in spec) == ("prompts" in spec or "images" in spec):
        raise ValueError(f"llava_eval_tasks.{name}: give either `task` (a Winoground-style eval task) or `images` and `prompts`")
    if "task" in spec:
        target = eval_tasks.get(spec["task"])
        if target is None or target.get("kind") != "winoground":
            raise ValueError(f"llava_eval_tasks.{name}.task: {spec['task']!r} is not an eval_tasks entry of kind winoground")
    elif not ("images" in spec and "prompts" in spec):
        raise ValueError(f"llava_eval_tasks.{name}: a text-to-image vqascore task needs both `images` and `prompts`")
    if "{}" not in spec.get("question", QUESTION):
        raise ValueError(f"llava_eval_tasks.{name}.question: the template needs a {{}} where the text goes")


def spec_files(spec: dict, eval_tasks: dict) -> list[str]:
    if "task" in spec:
        from sailflow.evaluate.kinds import kind_of

        target = eval_tasks[spec["task"]]
        return kind_of(target, spec["task"]).files(target)
    return [spec["images"], spec["prompts"]]


def read_prompts(spec: dict) -> tuple[list[str], list[str]]:
    """(image paths, prompts) of a text-to-image task; a missing column or image names file and row."""
    import csv

    images, prompts = [], []
    with open(spec["prompts"], newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "prompt"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{spec['prompts']}: missing column(s) {sorted(missing)} (needs image, prompt)")
        for n, row in enumerate(reader, 2):
            path = Path(spec["images"]) / row["image"]
            if not path.is_file():
                raise ValueError(f"{spec['prompts']}, line {n}: image {row['image']!r} is not in {spec['images']}")
            images.append(str(path))
            prompts.append(row["prompt"])
    return images, prompts


def evaluate(vlm, spec: dict, eval_tasks: dict, batch_size: int = 32, progress=None) -> dict:
    """Winoground-style: text / image / group (strict >, chance 1/4, 1/4, 1/6) and per-example scores;
    text-to-image: the mean score and one score per prompt row."""
    kw = {"question": spec.get("question", QUESTION), "answer": spec.get("answer", ANSWER), "batch_size": batch_size}
    if "task" in spec:
        from sailflow.evaluate.kinds.winoground import CHANCE, pair_examples, winoground_outcomes, winoground_scores

        target = eval_tasks[spec["task"]]
        from sailflow.evaluate.kinds import kind_of

        data = kind_of(target, spec["task"]).load(target, spec["task"])
        s = winoground_matrix(vlm, data, progress=progress, **kw)
        metrics = winoground_scores(s, data.groups)
        return {"metrics": metrics, "chance": {k: CHANCE[k.split("/")[0]] for k in metrics},
                "counts": {"examples": len(data.images0)}, "tie_rule": "strict >: a tie counts as wrong",
                "examples": pair_examples(s, data, winoground_outcomes(s))}
    images, prompts = read_prompts(spec)
    rows = vqascore_pairs(vlm, images, [[p] for p in prompts], progress=progress, **kw)
    scores = [float(r[0]) for r in rows]
    return {"metrics": {"vqascore": sum(scores) / max(1, len(scores))}, "chance": {}, "counts": {"pairs": len(scores)},
            "scores": [{"image": i, "prompt": p, "vqascore": v} for i, p, v in zip(images, prompts, scores)]}
