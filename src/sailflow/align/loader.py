"""Training batches straight from memory-mapped embedding chunks.

All chunk files of all datasets of a run form one index space (row g lives in file f at row
g - offset[f]). Each epoch is one permutation of the usable rows, seeded by (seed, epoch), so a
batch is a pure function of (epoch, batch index): resuming needs only the step number. A batch is
gathered with one fancy-indexing read per chunk file it touches (never per sample), in a
background thread that keeps ``prefetch`` batches ready (pinned when training on GPU). Memory does
not grow with the number of samples beyond the memory map and the index arrays.

Rows whose primary caption is empty are not used; a missing extra caption is masked out of the
extra-positive block.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from sailflow.embeddings import EmbeddingFile


@dataclass
class Batch:
    image: torch.Tensor  # [B, Dv]
    text: torch.Tensor  # [B, Dt]
    extra: torch.Tensor | None  # [B, Dt]
    extra_mask: torch.Tensor | None  # [B] bool


class EmbeddingPairs:
    """Aligned image / caption / extra-caption chunk files (same order in each list)."""

    def __init__(self, image: list[EmbeddingFile], text: list[EmbeddingFile], extra: list[EmbeddingFile] | None = None,
                 subset: int | None = None, seed: int = 0):
        if len(image) != len(text) or (extra is not None and len(extra) != len(image)):
            raise ValueError("image, text and extra chunk lists differ in length")
        self.image, self.text, self.extra = image, text, extra
        counts = np.array([f.count for f in image], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        usable = [np.flatnonzero(np.asarray(t.present) > 0) + off if t.present is not None else np.arange(c) + off
                  for t, c, off in zip(text, counts, self.offsets[:-1])]
        self.rows = np.concatenate(usable) if usable else np.zeros(0, np.int64)
        if subset is not None and subset < len(self.rows):
            pick = np.random.default_rng(seed).permutation(len(self.rows))[:subset]
            self.rows = np.sort(self.rows[pick])
        self.vision_dim = int(image[0].embeddings.shape[-1])
        self.text_dim = int(text[0].embeddings.shape[-1])

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, fraction: float, seed: int) -> np.ndarray:
        """Hold out ``fraction`` of the usable rows (seeded): remove them from training, return them."""
        perm = np.random.default_rng([seed, 7919]).permutation(len(self.rows))
        k = int(round(fraction * len(self.rows)))
        held = np.sort(self.rows[perm[:k]])
        self.rows = np.sort(self.rows[perm[k:]])
        return held

    def gather(self, rows: np.ndarray) -> Batch:
        """Rows (global indices) as tensors of the stored dtype (cast on the training device).

        The rows come back sorted: a batch is a set, and sorted rows make one sequential
        fancy-indexing read per chunk file, concatenated without any per-sample work."""
        rows = np.sort(rows)
        bounds = np.searchsorted(rows, self.offsets)
        n = len(rows)
        img = torch.empty(n, self.vision_dim, dtype=self.image[0].dtype)
        txt = torch.empty(n, self.text_dim, dtype=self.text[0].dtype)
        ext = torch.empty(n, self.text_dim, dtype=self.extra[0].dtype) if self.extra is not None else None
        mask = torch.ones(n, dtype=torch.bool) if self.extra is not None else None
        for f in np.flatnonzero(bounds[1:] > bounds[:-1]):
            lo, hi = bounds[f], bounds[f + 1]
            local = rows[lo:hi] - self.offsets[f]
            self.image[f].rows(local, out=img[lo:hi])
            self.text[f].rows(local, out=txt[lo:hi])
            if ext is not None:
                e = self.extra[f]
                e.rows(local, out=ext[lo:hi])
                if e.present is not None:
                    mask[lo:hi] = torch.from_numpy(np.asarray(e.present)[local] > 0)
        return Batch(img, txt, ext, mask)


class BatchSampler:
    """Global batch ``b`` of epoch ``e`` (drop_last), and a rank's contiguous share of it."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes {world}")
        if n < batch_size:
            raise ValueError(f"only {n} usable pairs for a batch of {batch_size}; lower align.batch_size")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.batches_per_epoch = n // batch_size
        self._perm_epoch, self._perm = None, None

    def indices(self, step: int) -> np.ndarray:
        epoch, b = divmod(step, self.batches_per_epoch)
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        batch = self._perm[b * self.batch_size : (b + 1) * self.batch_size]
        share = self.batch_size // self.world
        return batch[self.rank * share : (self.rank + 1) * share]


def prefetch(pairs: EmbeddingPairs, sampler: BatchSampler, start: int, stop: int, depth: int = 2, pin: bool = False):
    """Yield ``(step, Batch)`` for steps [start, stop), gathered ``depth`` batches ahead in a thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = threading.Event()

    def work():
        try:
            for step in range(start, stop):
                if done.is_set():
                    return
                b = pairs.gather(pairs.rows[sampler.indices(step)])
                if pin:
                    b = Batch(*(t.pin_memory() if t is not None else None for t in (b.image, b.text, b.extra, b.extra_mask)))
                q.put((step, b))
            q.put(None)
        except BaseException as e:  # surface loader errors in the training loop
            q.put(e)

    t = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()
