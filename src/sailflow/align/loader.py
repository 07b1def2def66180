"""Training batches straight from memory-mapped embedding chunks.

All chunk files of all datasets of a run form one index space (row g lives in file f at row
g - offset[f]). Each epoch is one permutation of the usable rows, seeded by (seed, epoch), so a
batch is a pure function of (epoch, batch index): resuming needs only the step number. A batch is
gathered with one fancy-indexing read per chunk file it touches (never per sample), straight into
reused batch buffers, in a background thread that keeps ``depth`` batches ready. The read is numpy's
``take`` (GIL released, so it overlaps the training step) on up to two threads, each copying one
contiguous half of the sorted batch; the threads wait passively, so beside a busy neighbour they
share a core without losing time. Never a parallel torch op: those spin on their OpenMP threads and
crawl when another job holds a core. For a GPU it also
copies them to the device on its own CUDA stream from a pinned buffer. Memory does not grow with
the number of samples beyond the memory map and the index arrays.

Rows whose primary caption is empty are not used; a missing extra caption is masked out of the
extra-positive block.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
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


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one, as under Slurm)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _rows_of(b: Batch, lo: int, hi: int) -> Batch:
    """Rows [lo, hi) of a batch's buffers (views)."""
    return Batch(*(t[lo:hi] if t is not None else None for t in (b.image, b.text, b.extra, b.extra_mask)))


class EmbeddingPairs:
    """Aligned image / caption / extra-caption chunk files (same order in each list)."""

    def __init__(self, image: list[EmbeddingFile], text: list[EmbeddingFile], extra: list[EmbeddingFile] | None = None,
                 subset: int | None = None, seed: int = 0, threads: int | None = None):
        if len(image) != len(text) or (extra is not None and len(extra) != len(image)):
            raise ValueError("image, text and extra chunk lists differ in length")
        self.image, self.text, self.extra = image, text, extra
        # gather threads: two where the process may use two cores (one under a one-core Slurm job)
        self.threads = max(1, threads if threads is not None else min(2, _usable_cores()))
        self._pool: ThreadPoolExecutor | None = None
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

    def empty_batch(self, n: int, pin: bool = False) -> Batch:
        """Buffers for a batch of ``n`` rows (pinned host memory with ``pin``), for :meth:`gather`'s ``out``."""
        def empty(dim, dtype):
            return torch.empty(n, dim, dtype=dtype, pin_memory=pin)

        extra = self.extra is not None
        return Batch(empty(self.vision_dim, self.image[0].dtype), empty(self.text_dim, self.text[0].dtype),
                     empty(self.text_dim, self.extra[0].dtype) if extra else None,
                     torch.empty(n, dtype=torch.bool, pin_memory=pin) if extra else None)

    def gather(self, rows: np.ndarray, out: Batch | None = None) -> Batch:
        """Rows (global indices) as tensors of the stored dtype (cast on the training device),
        written into ``out`` (from :meth:`empty_batch`; fresh buffers when None).

        The rows come back sorted: a batch is a set, and sorted rows make one sequential
        fancy-indexing read per chunk file, concatenated without any per-sample work. With two
        threads each copies one contiguous half of the sorted rows into its half of the buffers."""
        rows = np.sort(rows)
        n = len(rows)
        b = out if out is not None else self.empty_batch(n)
        cuts = np.unique(np.linspace(0, n, self.threads + 1).astype(int))  # no empty parts (none at all for n = 0)
        parts = [(rows[lo:hi], _rows_of(b, lo, hi)) for lo, hi in zip(cuts, cuts[1:])]
        if len(parts) > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="gather")
        futures = [self._pool.submit(self._fill, *p) for p in parts[1:]]
        for p in parts[:1]:  # the first part on this thread
            self._fill(*p)
        for fut in futures:
            fut.result()
        return _rows_of(b, 0, n)

    def _fill(self, rows: np.ndarray, out: Batch) -> None:
        """Sorted global ``rows`` into ``out`` (exactly ``len(rows)`` rows): one read per chunk file."""
        bounds = np.searchsorted(rows, self.offsets)
        if out.extra_mask is not None:
            out.extra_mask.fill_(True)
        for f in np.flatnonzero(bounds[1:] > bounds[:-1]):
            lo, hi = bounds[f], bounds[f + 1]
            local = rows[lo:hi] - self.offsets[f]
            self.image[f].rows(local, out=out.image[lo:hi])
            self.text[f].rows(local, out=out.text[lo:hi])
            if out.extra is not None:
                e = self.extra[f]
                e.rows(local, out=out.extra[lo:hi])
                if e.present is not None:
                    out.extra_mask[lo:hi] = torch.from_numpy(np.asarray(e.present)[local] > 0)


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


def _to_device(b: Batch, device: torch.device, stream) -> Batch:
    """Copy a (pinned) batch to ``device`` on ``stream`` and wait for it, so its buffers can be reused."""
    with torch.cuda.stream(stream):
        out = Batch(*(t.to(device, non_blocking=True) if t is not None else None for t in (b.image, b.text, b.extra, b.extra_mask)))
    stream.synchronize()
    return out


def prefetch(pairs: EmbeddingPairs, sampler: BatchSampler, start: int, stop: int, depth: int = 2, device: str | torch.device = "cpu"):
    """Yield ``(step, Batch)`` for steps [start, stop), gathered ``depth`` batches ahead in a thread.

    On the CPU the batches live in ``depth + 2`` reused buffers: a batch is valid until the next
    one is asked for (the training step is done with it by then). For a CUDA device the thread
    gathers into one pinned buffer, copies it to the device on a stream of its own and yields
    device tensors, so the training thread never waits for a host-to-device copy."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    share = sampler.batch_size // sampler.world
    ring = [pairs.empty_batch(share, pin=cuda) for _ in range(1 if cuda else depth + 2)]
    stream = torch.cuda.Stream(device) if cuda else None
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = threading.Event()

    def work():
        try:
            if cuda:  # a new thread starts on device 0: use the training device (as torch's pin-memory thread does)
                torch.cuda.set_device(device)
            for n, step in enumerate(range(start, stop)):
                if done.is_set():
                    return
                b = pairs.gather(pairs.rows[sampler.indices(step)], out=ring[n % len(ring)])
                q.put((step, _to_device(b, device, stream) if cuda else b))
            q.put(None)
        except BaseException as e:  # surface loader errors in the training loop
            q.put(e)

    t = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if cuda:  # allocated on the copy stream, used on the training stream
                for x in (item[1].image, item[1].text, item[1].extra, item[1].extra_mask):
                    if x is not None:
                        x.record_stream(torch.cuda.current_stream(device))
            yield item
    finally:
        done.set()
