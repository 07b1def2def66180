"""VQAScore (Lin et al. 2024, CLIP-FlanT5's metric): how much a trained LLaVA stage believes an image
shows a text.

    VQAScore(image, text) = exp(mean over the answer tokens of log p(token | image, question, earlier tokens))

for the question ``Does this figure show "{text}"? Please answer yes or no.`` and the answer ``Yes``
followed by the end-of-answer token, teacher-forced: the answer tokens are those the run's template
supervises in training (vicuna_v1: "▁Yes" and ``</s>``), so the score is the geometric mean
``sqrt(P("Yes") * P(</s> | "Yes"))`` as t2v_metrics computes it, not the bare first-token probability.
No generation is involved. Images are preprocessed as in training (``pad`` for LLaVA-1.5 stage 2).

Every text scored against an image shares the prompt up to and including the image (BOS, system
prompt, ``USER: `` and the image's tokens: in LLaVA-1.5 about 600 of a pair's 640 tokens). By default
(``share="prefix"``) the tower runs once per image and the LLM once over that prefix; each text then
continues from the prefix's key/value cache, so only its own question and answer tokens are computed.
``share="features"`` shares only the image features (the LLM runs over the whole prompt per pair) and
``share="none"`` re-encodes the image per pair; the three give the same scores (a test) and
benchmarks/llava_generate.py measures them against each other.

An encoder-decoder LLM (CLIP-FlanT5, t2v_metrics' own model): the question prompt (with the image) goes
to the encoder and the answer tokens are the decoder labels, T5's ids of "Yes" + ``</s>`` (``t5_v1``;
stage 1's ``t5_plain*`` templates discard the question, as in their training), teacher-forced behind
the decoder start token; the score is the same exp(mean log-prob). There is no prefix to share (the
encoder attends both ways, so the question changes every encoder state): ``share="prefix"`` shares the
image features only, and the encoder runs once per (image, text) pair.
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


def _exp_mean_logprob(logits: torch.Tensor, labels: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """exp(mean log-probability of the supervised tokens) per row; ``logits[:, t]`` predicts ``labels[:, t + 1]``
    (a decoder), or ``labels[:, t]`` with ``shift=False`` (an encoder-decoder's decoder labels)."""
    import torch

    from sailflow.llava.templates import IGNORE_INDEX

    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = torch.log_softmax(logits.double(), dim=-1)
    target = labels
    keep = target != IGNORE_INDEX
    tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return torch.exp(tok.sum(1) / keep.sum(1))


def _right_padded(ids: list[list[int]], labels: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, labels, mask)``, padded on the right (labels with IGNORE_INDEX): ``[B, L]`` each, or labels
    ``[B, T]`` when they are a sequence of their own (an encoder-decoder's)."""
    import torch

    from sailflow.llava.templates import IGNORE_INDEX

    L, T = max(len(r) for r in ids), max(len(r) for r in labels)
    out_ids = torch.zeros(len(ids), L, dtype=torch.long, device=device)
    out_labels = torch.full((len(ids), T), IGNORE_INDEX, dtype=torch.long, device=device)
    mask = torch.zeros(len(ids), L, dtype=torch.bool, device=device)
    for b, (r, lab) in enumerate(zip(ids, labels)):
        out_ids[b, : len(r)] = torch.tensor(r, device=device)
        out_labels[b, : len(lab)] = torch.tensor(lab, device=device)
        mask[b, : len(r)] = True
    return out_ids, out_labels, mask


def _batch_scores(vlm, encs, feats: torch.Tensor | None, pixels: torch.Tensor | None) -> torch.Tensor:
    import torch

    m = vlm.model
    ids, labels, mask = _right_padded([e.input_ids for e in encs], [e.labels for e in encs], vlm.device)
    if m.is_encoder_decoder:  # the prompt to the encoder, "Yes" + </s> teacher-forced in the decoder
        with torch.no_grad():
            logits = m(ids, mask, labels, pixels, image_features=feats).logits
        return _exp_mean_logprob(logits, labels, shift=False)
    with torch.no_grad():
        embeds, attn, labels, pos = m.prepare(ids, mask, labels, pixels, image_features=feats)
        logits = m.language_model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False).logits
    return _exp_mean_logprob(logits, labels)


def _prefix_length(encs) -> int | None:
    """Where the image placeholder is, when every text has the same unsupervised ids before it and
    nothing supervised right after it (else None: no shared prefix)."""
    from sailflow.llava.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    ids = encs[0].input_ids
    if IMAGE_TOKEN_INDEX not in ids:
        return None
    k = ids.index(IMAGE_TOKEN_INDEX)
    for e in encs:
        if e.input_ids[: k + 1] != ids[: k + 1] or any(t != IGNORE_INDEX for t in e.labels[: k + 2]):
            return None
    return k


def _prefix_cache(vlm, encs, k: int, feats: torch.Tensor):
    """One LLM pass over the prompt the texts share (``input_ids[:k]``, then the image's features):
    ``(its key/value cache, its length)``."""
    import torch

    m, lm = vlm.model, vlm.model.language_model
    with torch.no_grad():
        prefix = torch.cat([m.embed_tokens(torch.tensor(encs[0].input_ids[:k], device=vlm.device)), feats[0].to(lm.dtype)])
        P = prefix.shape[0]
        return lm(inputs_embeds=prefix[None], position_ids=torch.arange(P, device=vlm.device)[None], use_cache=True).past_key_values, P


def _cached_scores(vlm, encs, k: int, prefix) -> torch.Tensor:
    """Scores of ``encs`` (sharing ``input_ids[:k]`` and the image at ``k``) continuing from the prefix's
    key/value cache (:func:`_prefix_cache`), repeated for the batch: only the texts' own tokens run."""
    import copy

    import torch

    past, P = prefix
    m, device, lm = vlm.model, vlm.device, vlm.model.language_model
    ids, labels, own = _right_padded([e.input_ids[k + 1 :] for e in encs], [e.labels[k + 1 :] for e in encs], device)
    mask = torch.cat([torch.ones(len(encs), P, dtype=torch.long, device=device), own.long()], dim=1)
    with torch.no_grad():
        cache = copy.deepcopy(past)
        cache.batch_repeat_interleave(len(encs))
        positions = (P + torch.arange(ids.shape[1], device=device))[None].expand(len(encs), -1)
        logits = lm(inputs_embeds=m.embed_tokens(ids), attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True).logits
    return _exp_mean_logprob(logits, labels)


SHARE = ("prefix", "features", "none")


def vqascore_pairs(vlm, images: list, texts_per_image: list[list[str]], *, question: str = QUESTION, answer: str = ANSWER,
                   batch_size: int = 32, share: str = "prefix", progress=None) -> list[torch.Tensor]:
    """For each image, the VQAScores (float64, in (0, 1]) of its own list of texts; ``share``: what
    the texts of one image share (see the module's docstring)."""
    import torch

    if len(images) != len(texts_per_image):
        raise ValueError(f"{len(images)} images for {len(texts_per_image)} text lists")
    if share not in SHARE:
        raise ValueError(f"share must be one of {SHARE}, not {share!r}")
    if not vlm.template.reads_question:
        raise ValueError(f"VQAScore asks a question, and this stage's template {vlm.template.name!r} (stage 1, captioning) "
                         "discards it: every text would get the same score. Score a stage-2 (finetune) stage")
    out = []
    for image, texts in zip(images, texts_per_image):
        encs = _encode_texts(vlm, texts, question, answer)
        pixels = vlm._pixels([image]).to(vlm.device)
        with torch.no_grad():
            feats = vlm.model.image_features(pixels) if share != "none" else None
        k = _prefix_length(encs) if share == "prefix" and encs and not vlm.model.is_encoder_decoder else None
        if k is not None and max(len(e.input_ids) for e in encs) - 1 + feats.shape[1] > vlm.model.max_length:
            k = None  # a prompt longer than the model's max_length is cut as in training: no cache
        prefix = _prefix_cache(vlm, encs, k, feats) if k is not None else None
        scores = []
        for i in range(0, len(encs), batch_size):
            chunk = encs[i : i + batch_size]
            if prefix is not None:
                scores.append(_cached_scores(vlm, chunk, k, prefix))
            elif share != "none":
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
    if "task" in spec:  # check_spec made sure it is a winoground task
        from sailflow.evaluate.kinds.winoground import KIND, scored

        target = eval_tasks[spec["task"]]
        data = KIND.load(target, spec["task"])
        return {**scored(winoground_matrix(vlm, data, progress=progress, **kw), data), "tie_rule": KIND.tie_rule}
    images, prompts = read_prompts(spec)
    rows = vqascore_pairs(vlm, images, [[p] for p in prompts], progress=progress, **kw)
    scores = [float(r[0]) for r in rows]
    return {"metrics": {"vqascore": sum(scores) / max(1, len(scores))}, "chance": {}, "counts": {"pairs": len(scores)},
            "scores": [{"image": i, "prompt": p, "vqascore": v} for i, p, v in zip(images, prompts, scores)]}
