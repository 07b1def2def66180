"""Image-text retrieval recall@k as CLIP_benchmark publishes it.

``scores[t, i]`` = similarity of caption t and image i; ``text_image[t]`` = the image of caption t
(images may have different numbers of captions). A query is a hit at k if *any* of its positives
is among its top k:
    text_to_image_R@k   one query per caption, its one image among all images
                        (CLIP_benchmark's ``image_retrieval_recall@k``)
    image_to_text_R@k   one query per image, any of its captions among all captions
                        (CLIP_benchmark's ``text_retrieval_recall@k``)
Ties: the lower index ranks first.
"""

from __future__ import annotations

import torch

from sailflow.evaluate.ranking import topk_indices


def retrieval_metrics(scores: torch.Tensor, text_image: torch.Tensor, ks=(1, 5, 10)) -> dict:
    n_texts, n_images = scores.shape
    if len(text_image) != n_texts:
        raise ValueError(f"{n_texts} captions scored but {len(text_image)} caption->image indices given")
    out = {}
    kmax = max(ks)
    t2i = topk_indices(scores, kmax) == text_image[:, None]  # [T, k]
    positives = text_image[None, :] == torch.arange(n_images)[:, None]  # [I, T]
    top_t = topk_indices(scores.T, kmax)  # [I, k] caption indices
    i2t = torch.gather(positives, 1, top_t)
    for k in ks:
        out[f"text_to_image_R@{k}"] = float(t2i[:, :k].any(1).float().mean())
        out[f"image_to_text_R@{k}"] = float(i2t[:, :k].any(1).float().mean())
    out.update(images=int(n_images), captions=int(n_texts))
    return out
