"""Alignment tuning: heads, losses (single and 2-process), optimiser, schedule, loader, resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sailflow.align.heads import AlignmentHead, StarMLP
from sailflow.align.loader import BatchSampler, EmbeddingPairs, prefetch
from sailflow.align.losses import ClipLoss, SigLipLoss
from sailflow.align.optim import Lion, lr_at, param_groups
from sailflow.embeddings import open_embeddings, save_embeddings


def test_siglip_matches_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    ext = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    s, b = torch.tensor([math.log(10.0)]), torch.tensor([-5.0])
    r = 1 / math.sqrt(2)
    cos = [[1.0, r], [0.0, r]]  # normalised img @ normalised txt^T
    cos_e = [[0.0, 0.0], [1.0, 1.0]]
    ls = lambda z: math.log(1 / (1 + math.exp(-z)))  # noqa: E731
    terms = []
    for c in (cos, cos_e):
        for i in range(2):
            for j in range(2):
                y = 1 if i == j else -1
                terms.append(ls(y * (10 * c[i][j] - 5)))
    expected = -sum(terms) / 8
    out = SigLipLoss()(img, txt, s, b, ext)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["positive"].item() == pytest.approx(-(terms[0] + terms[3]) / 4, rel=1e-6)
    # without the extra block: mean over the 2x2 matrix only
    assert SigLipLoss()(img, txt, s, b)["loss"].item() == pytest.approx(-sum(terms[:4]) / 4, rel=1e-6)
    # a missing extra caption is removed from the extra block (its column)
    masked = SigLipLoss()(img, txt, s, b, ext, torch.tensor([True, False]))["loss"].item()
    assert masked == pytest.approx(-(sum(terms[:4]) + terms[4] + terms[6]) / 6, rel=1e-6)


def test_clip_loss_matches_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s = torch.tensor([math.log(2.0)])
    r = 1 / math.sqrt(2)
    logits = torch.tensor([[1.0, r], [0.0, r]]) * 2
    ce = lambda l, t: -(l[t] - torch.logsumexp(l, 0)).item()  # noqa: E731
    expected = (ce(logits[0], 0) + ce(logits[1], 1) + ce(logits.T[0], 0) + ce(logits.T[1], 1)) / 4
    assert ClipLoss()(img, txt, s)["loss"].item() == pytest.approx(expected, rel=1e-6)


def _worker(rank, world, init, data, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    head = AlignmentHead(6, 5, dim=4, head="star", width_factor=2).double()
    n = data["img"].shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    for name, loss_fn in (("siglip", SigLipLoss()), ("clip", ClipLoss())):
        head.zero_grad()
        zi, zt, ze = head.encode_image(data["img"][sl]), head.encode_text(data["txt"][sl]), head.encode_text(data["ext"][sl])
        out = loss_fn(zi, zt, head.logit_scale, head.logit_bias, ze)
        out["loss"].backward()
        for p in head.parameters():
            if p.grad is not None:  # CLIP does not use logit_bias
                dist.all_reduce(p.grad)
        torch.save({"loss": out["loss"].detach(), "grads": {k: p.grad for k, p in head.named_parameters() if p.grad is not None}},
                   Path(out_dir) / f"{name}_{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_equal_one_big_batch(tmp_path):
    # float64 throughout (data, head, loss): the two processes sum in another order than one, and in
    # float32 that alone moves gradients by ~5e-7 of the largest one (more than a fixed atol of 1e-7
    # on some machines' kernels). In float64 the order leaves ~1e-16: the default float64
    # tolerances (1e-7) are exact for this purpose, while a wrong gather or gradient sum is off by O(1).
    g = torch.Generator().manual_seed(1)
    data = {k: torch.randn(8, d, generator=g, dtype=torch.float64) for k, d in (("img", 6), ("txt", 5), ("ext", 5))}
    torch.multiprocessing.spawn(_worker, args=(2, f"file://{tmp_path}/init", data, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    head = AlignmentHead(6, 5, dim=4, head="star", width_factor=2).double()
    for name, loss_fn in (("siglip", SigLipLoss()), ("clip", ClipLoss())):
        head.zero_grad()
        out = loss_fn(head.encode_image(data["img"]), head.encode_text(data["txt"]), head.logit_scale, head.logit_bias,
                      head.encode_text(data["ext"]))
        out["loss"].backward()
        expected = {k: p.grad for k, p in head.named_parameters() if p.grad is not None}
        assert out["loss"].dtype == torch.float64 and all(g.dtype == torch.float64 for g in expected.values())
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{name}_{rank}.pt", weights_only=True)
            torch.testing.assert_close(got["loss"], out["loss"].detach())
            assert got["grads"].keys() == expected.keys()
            for k, g in expected.items():
                torch.testing.assert_close(got["grads"][k], g, msg=f"{name} {k}")


def test_head_init_and_sail_state_dict_keys():
    h = AlignmentHead(16, 12, dim=8, head="star", width_factor=2)
    keys = set(h.state_dict())
    assert {"logit_scale", "logit_bias", "vision_layer_norm.weight", "text_layer_norm.bias",
            "vision_mapping_network.f1.weight", "vision_mapping_network.f2.bias", "text_mapping_network.g.weight"} <= keys
    assert h.logit_scale.item() == pytest.approx(math.log(20)) and h.logit_bias.item() == -10
    assert h.vision_mapping_network.f1.weight.shape == (32, 16)
    assert torch.all(h.text_mapping_network.g.bias == 0)
    bound = math.sqrt(6 / (16 + 32))  # xavier-uniform
    assert h.vision_mapping_network.f1.weight.abs().max() <= bound
    h.logit_scale.data.fill_(9.0)
    h.clamp_logit_scale()
    assert h.logit_scale.item() == pytest.approx(math.log(100))
    x = torch.randn(3, 16)
    m = StarMLP(16, 8, 2)
    expected = m.g(F.relu6(m.f1(x).clamp(-1e3, 1e3)) * m.f2(x).clamp(-1e3, 1e3))
    torch.testing.assert_close(m(x), expected)


def test_convert_released_sail_head(tmp_path):
    from sailflow.align.convert import convert

    src = AlignmentHead(16, 12, dim=8, head="star", width_factor=2)
    torch.save({"epoch": 30, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "sail.pt")
    convert(tmp_path / "sail.pt", tmp_path / "out", head="star", dim=8, width_factor=2)
    loaded = AlignmentHead.load(tmp_path / "out")
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    torch.save({"state_dict": {"vision_layer_norm.weight": torch.ones(16), "text_layer_norm.weight": torch.ones(12)}}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        convert(tmp_path / "bad.pt", tmp_path / "bad", head="star", dim=8, width_factor=2)


def test_lion_step_and_groups():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.1, 0.0])
    opt.step()
    # decay: p * (1 - 0.1 * 0.5); update: -lr * sign(0.1 * g) (m starts at 0)
    torch.testing.assert_close(p.data, torch.tensor([1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.003, -0.001, 0.0]))
    h = AlignmentHead(4, 4, dim=2, head="linear")
    groups = param_groups(h, weight_decay=0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in h.named_parameters() if id(p) in decayed}
    assert names == {"vision_mapping_network.weight", "text_mapping_network.weight"}
    assert len(param_groups(h, 0.1, decay_all=True)) == 1


def test_warmup_cosine():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.0)


def _chunks(tmp_path, sizes, dv=6, dt=5, missing=()):
    files = {"image": [], "text": [], "extra": []}
    start = 0
    rng = np.random.default_rng(0)
    for c, n in enumerate(sizes):
        ids = np.arange(start, start + n)
        start += n
        present = np.array([i not in missing for i in ids], dtype=np.uint8)
        for label, d in (("image", dv), ("text", dt), ("extra", dt)):
            p = tmp_path / f"{label}_{c}.safetensors"
            emb = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float16))
            save_embeddings(p, emb, ids, {"chunk": f"{c:04d}"}, present=present if label != "image" else None)
            files[label].append(open_embeddings(p))
    return files


def test_loader_gathers_rows_and_partitions_batches(tmp_path):
    f = _chunks(tmp_path, [7, 5, 9], missing={3, 15})
    pairs = EmbeddingPairs(f["image"], f["text"], f["extra"])
    assert len(pairs) == 19 and 3 not in pairs.rows and 15 not in pairs.rows
    rows = np.array([20, 0, 8, 7, 14])
    b = pairs.gather(rows)  # a batch is a set: rows come back sorted, each modality the same way
    flat = torch.cat([x.rows(slice(None)) for x in f["image"]])
    torch.testing.assert_close(b.image, flat[np.sort(rows)])
    torch.testing.assert_close(b.text, torch.cat([x.rows(slice(None)) for x in f["text"]])[np.sort(rows)])
    torch.testing.assert_close(b.extra, torch.cat([x.rows(slice(None)) for x in f["extra"]])[np.sort(rows)])
    assert b.image.dtype == torch.float16 and b.extra_mask.all()
    s = BatchSampler(len(pairs), 8, seed=3)
    assert s.batches_per_epoch == 2
    assert not np.array_equal(s.indices(0), s.indices(2))  # a new permutation each epoch
    assert np.array_equal(s.indices(2), BatchSampler(len(pairs), 8, seed=3).indices(2))  # a pure function of step
    halves = [BatchSampler(len(pairs), 8, seed=3, rank=r, world=2).indices(1) for r in (0, 1)]
    assert np.array_equal(np.concatenate(halves), s.indices(1))
    assert len(EmbeddingPairs(f["image"], f["text"], subset=10, seed=0)) == 10


def test_batches_are_gathered_into_reused_buffers_and_prefetched_unchanged(tmp_path):
    f = _chunks(tmp_path, [7, 5, 9], missing={3, 15})
    pairs = EmbeddingPairs(f["image"], f["text"], f["extra"])
    buf = pairs.empty_batch(8)
    b = pairs.gather(np.array([20, 0, 8, 7, 14]), out=buf)  # no new memory: views of the buffer
    assert b.image.data_ptr() == buf.image.data_ptr() and b.extra.data_ptr() == buf.extra.data_ptr() and len(b.image) == 5
    fresh = pairs.gather(np.array([20, 0, 8, 7, 14]))
    for x, y in ((b.image, fresh.image), (b.text, fresh.text), (b.extra, fresh.extra), (b.extra_mask, fresh.extra_mask)):
        assert torch.equal(x, y)
    sampler = BatchSampler(len(pairs), 4, seed=1)
    seen, ptrs = [], set()
    for step, batch in prefetch(pairs, sampler, 1, 9, depth=2):  # each batch checked before the next is asked for
        want = pairs.gather(pairs.rows[sampler.indices(step)])
        assert torch.equal(batch.image, want.image) and torch.equal(batch.extra_mask, want.extra_mask)
        seen.append(step)
        ptrs.add(batch.image.data_ptr())
    assert seen == list(range(1, 9)) and len(ptrs) == 4  # depth + 2 buffers, reused round-robin


def test_gather_on_several_threads_equals_one_thread(tmp_path):
    """The threads' halves of a sorted batch cross chunk files; the buffers come back as one thread fills them."""
    f = _chunks(tmp_path, [7, 5, 9], missing={3, 15})
    rows = np.array([20, 3, 0, 8, 7, 15, 14, 6, 12])  # 3 and 15: extra captions missing, masked out
    one = EmbeddingPairs(f["image"], f["text"], f["extra"], threads=1).gather(rows)
    assert one.extra_mask.tolist() == [r not in (3, 15) for r in np.sort(rows)]
    for threads in (2, 3, 20):
        pairs = EmbeddingPairs(f["image"], f["text"], f["extra"], threads=threads)
        buf = pairs.empty_batch(12)
        buf.extra_mask.fill_(False)  # stale values from an earlier batch must not survive
        for _ in range(2):  # the pool is reused
            b = pairs.gather(rows, out=buf)
            for x, y in ((b.image, one.image), (b.text, one.text), (b.extra, one.extra), (b.extra_mask, one.extra_mask)):
                assert torch.equal(x, y)
    assert len(EmbeddingPairs(f["image"], f["text"], threads=2).gather(np.zeros(0, np.int64)).image) == 0


def test_loader_gathers_bfloat16_bit_exact_and_refuses_bad_rows(tmp_path):
    """bf16 is stored as uint16 in the memory map: gathered into a bfloat16 buffer, bit for bit."""
    rng = np.random.default_rng(0)
    files = {}
    for label, d in (("image", 6), ("text", 5)):
        full = torch.from_numpy(rng.standard_normal((12, d)).astype(np.float32)).to(torch.bfloat16)
        for c, sl in enumerate((slice(0, 7), slice(7, 12))):
            save_embeddings(tmp_path / f"{label}_{c}.safetensors", full[sl], np.arange(12)[sl], {}, present=np.ones(12, np.uint8)[sl] if label == "text" else None)
        files[label] = (full, [open_embeddings(tmp_path / f"{label}_{c}.safetensors") for c in range(2)])
    pairs = EmbeddingPairs(files["image"][1], files["text"][1])
    rows = np.array([11, 2, 7, 6, 0])
    b = pairs.gather(rows, out=pairs.empty_batch(8))
    assert b.image.dtype == torch.bfloat16 and b.extra is None
    assert torch.equal(b.image.view(torch.int16), files["image"][0][np.sort(rows)].view(torch.int16))
    assert torch.equal(b.text.view(torch.int16), files["text"][0][np.sort(rows)].view(torch.int16))
    f = files["image"][1][0]
    with pytest.raises(IndexError, match="out of range"):
        f.rows(np.array([0, 7]))  # the first chunk has rows 0..6
    with pytest.raises(ValueError, match="out is torch.float32"):
        f.rows(np.array([0, 1]), out=torch.empty(2, 6))


def _train_script(tmp_path, out, kill_before_step=None, kill_in_checkpoint=None):
    """The trainer in a fresh process; it SIGKILLs itself at a chosen point, so where the kill lands
    does not depend on the machine's speed: just before training step ``kill_before_step``, or in
    checkpoint write number ``kill_in_checkpoint`` after its temporary file is complete and before
    the rename that publishes it (the last moment a crash can catch it)."""
    return textwrap.dedent(f"""
        import glob, os, signal, sys
        from pathlib import Path
        import sailflow.align.loader as L
        kill_before_step, kill_in_checkpoint = {kill_before_step!r}, {kill_in_checkpoint!r}
        if kill_before_step is not None:
            orig_prefetch = L.prefetch
            def prefetch(*a, **k):  # runs on the training thread: batch `step` arrives before step `step` is trained
                for step, batch in orig_prefetch(*a, **k):
                    if step == kill_before_step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield step, batch
            L.prefetch = prefetch
        if kill_in_checkpoint is not None:
            orig_replace, writes = os.replace, []
            def replace(src, dst, *a, **k):  # sailflow.io.atomic_path publishes with os.replace
                if Path(dst).name == "state.safetensors":
                    writes.append(dst)
                    if len(writes) == kill_in_checkpoint:
                        os.kill(os.getpid(), signal.SIGKILL)
                return orig_replace(src, dst, *a, **k)
            os.replace = replace
        import sailflow.align.train as T
        T.prefetch = L.prefetch
        d = {str(tmp_path)!r}
        args = dict(image=sorted(glob.glob(d + "/image_*.safetensors")), text=sorted(glob.glob(d + "/text_*.safetensors")),
                    extra=sorted(glob.glob(d + "/extra_*.safetensors")), out_dir={str(out)!r}, meta={{}},
                    settings=dict(head="star", dim=8, width_factor=2, loss="siglip", optimizer="lion", lr=1e-3,
                                  weight_decay=1e-4, betas=[0.9, 0.99], decay_all=False, batch_size=16, epochs=6,
                                  warmup=0.1, logit_scale=20.0, logit_bias=-10.0, precision="fp32", seed=1,
                                  log_every=2, checkpoint_every=3, subset=None))
        T.train(args, log=sys.stdout)
    """)


@pytest.mark.parametrize("kill", [{"kill_before_step": 5}, {"kill_in_checkpoint": 2}], ids=["mid_training", "mid_checkpoint_write"])
def test_kill_then_resume_is_bitwise_identical(tmp_path, kill):
    """Killed after the step-3 checkpoint, either two steps later (its log has a line for step 4 that
    the state does not know) or while writing the step-6 checkpoint: the resumed run continues from
    step 3 and ends with exactly the uninterrupted run's head and log."""
    _chunks(tmp_path, [40, 30, 30])  # 100 pairs, batches of 16: 6 steps per epoch, 36 steps
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, "-c", _train_script(tmp_path, ref)], check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-c", _train_script(tmp_path, killed, **kill)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {kill} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    state = killed / "state" / "state.safetensors"
    assert state.exists() and not (killed / "head.safetensors").exists()
    out = subprocess.run([sys.executable, "-c", _train_script(tmp_path, killed)], check=True, capture_output=True, text=True)
    assert "resumed from step 3" in out.stdout
    a, b = load_file(ref / "head.safetensors"), load_file(killed / "head.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "train_log.jsonl").read_text() == _strip_speed(killed / "train_log.jsonl", ref / "train_log.jsonl")


def _strip_speed(p, ref):
    """The logs agree except for the measured speed."""
    import json

    got = [json.loads(x) for x in Path(p).read_text().splitlines()]
    exp = [json.loads(x) for x in Path(ref).read_text().splitlines()]
    assert len(got) == len(exp)
    for g, e in zip(got, exp):
        g["pairs_per_s"] = e["pairs_per_s"]
    return "".join(json.dumps(g) + "\n" for g in got)


def test_non_finite_loss_is_reported_with_its_step(tmp_path):
    from sailflow.align.train import NonFiniteLoss, train

    f = _chunks(tmp_path, [32])
    bad = tmp_path / "image_0.safetensors"
    emb = f["image"][0].rows(slice(None)).clone()
    emb[:] = float("inf")
    save_embeddings(bad, emb, f["image"][0].sample_id, {"chunk": "0000"})
    args = dict(image=[str(bad)], text=[str(tmp_path / "text_0.safetensors")], out_dir=str(tmp_path / "o"), meta={},
                settings=dict(head="linear", dim=4, width_factor=1, loss="siglip", optimizer="lion", lr=1e-3, weight_decay=0.0,
                              betas=[0.9, 0.99], decay_all=False, batch_size=8, epochs=1, warmup=1, logit_scale=20.0,
                              logit_bias=-10.0, precision="fp32", seed=0, log_every=3, checkpoint_every=100, subset=None))
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 0"):
        train(args, log=open(os.devnull, "w"))


def test_training_learns_a_linear_relation_scored_on_held_out_pairs(tmp_path):
    """Texts are a fixed linear map of images plus noise: a linear head must retrieve held-out pairs."""
    from sailflow.align.train import train

    rng = np.random.default_rng(0)
    n, dv, dt = 1200, 16, 12
    img = rng.standard_normal((n, dv)).astype(np.float32)
    txt = img @ rng.standard_normal((dv, dt)).astype(np.float32) + 0.05 * rng.standard_normal((n, dt)).astype(np.float32)
    ids = np.arange(n)
    save_embeddings(tmp_path / "i.safetensors", torch.from_numpy(img), ids, {})
    save_embeddings(tmp_path / "t.safetensors", torch.from_numpy(txt), ids, {}, present=np.ones(n, np.uint8))
    settings = dict(head="linear", dim=16, width_factor=1, loss="siglip", optimizer="lion", lr=3e-3, weight_decay=0.0,
                    betas=[0.9, 0.99], decay_all=False, batch_size=128, epochs=30, warmup=0.05, logit_scale=10.0,
                    logit_bias=-10.0, precision="fp32", seed=0, log_every=20, checkpoint_every=10_000, subset=None, holdout=0.1)
    res = train(dict(image=[str(tmp_path / "i.safetensors")], text=[str(tmp_path / "t.safetensors")], out_dir=str(tmp_path / "o"),
                     meta={}, settings=settings), log=open(os.devnull, "w"))
    h = res["holdout"]
    assert h["pairs"] == 120 and res["pairs"] == 1080
    assert h["image_to_text_r1"] > 0.8 and h["text_to_image_r1"] > 0.8  # chance is 1/120
    log = [__import__("json").loads(x) for x in (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert AlignmentHead.load(tmp_path / "o").config["head"] == "linear"


def test_torchrun_two_processes_train_like_one(tmp_path):
    """The real trainer under torchrun (2 CPU processes, gloo): the same training as one process.

    Compared by the loss, not parameter by parameter: the two runs sum in different orders
    (~1e-7 relative in float32), and Adam divides each gradient by its own running magnitude, so
    where a gradient is near zero that noise can flip a parameter's whole step (up to lr) on one
    machine's kernels and not another's. Such a parameter barely moves the loss (its gradient is
    ~0), while a wrong shard, gather or gradient sum changes every step's loss at first order. So:
    every step's training loss, and the final heads' loss on all pairs (float64), agree to 1e-5
    (measured: 1.5e-7 between 1 and 2 processes; 1e-2 without the gradient sum, 0.8 with local
    negatives only)."""
    import json

    f = _chunks(tmp_path, [40, 24])
    settings = dict(head="star", dim=8, width_factor=2, loss="siglip", optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                    betas=[0.9, 0.99], decay_all=False, batch_size=16, epochs=2, warmup=1, logit_scale=20.0, logit_bias=-10.0,
                    precision="fp32", seed=3, log_every=1, checkpoint_every=100, subset=None)
    heads, logs = {}, {}
    for nproc in (1, 2):
        args = dict(image=sorted(map(str, tmp_path.glob("image_*.safetensors"))), text=sorted(map(str, tmp_path.glob("text_*.safetensors"))),
                    extra=sorted(map(str, tmp_path.glob("extra_*.safetensors"))), out_dir=str(tmp_path / f"run{nproc}"), meta={}, settings=settings)
        (tmp_path / f"args{nproc}.json").write_text(json.dumps(args))
        torchrun = Path(sys.executable).parent / "torchrun"
        subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "sailflow.align.train", str(tmp_path / f"args{nproc}.json")],
                       check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        heads[nproc] = AlignmentHead.load(tmp_path / f"run{nproc}").double()
        logs[nproc] = [json.loads(x) for x in (tmp_path / f"run{nproc}" / "train_log.jsonl").read_text().splitlines()]
        assert json.loads((tmp_path / f"run{nproc}" / "config.json").read_text())["world"] == nproc
    assert [r["step"] for r in logs[1]] == [r["step"] for r in logs[2]] == list(range(1, 9))  # 4 steps/epoch, 2 epochs
    np.testing.assert_allclose([r["loss"] for r in logs[2]], [r["loss"] for r in logs[1]], rtol=1e-5)
    img, txt, ext = (torch.cat([x.rows(slice(None)) for x in f[k]]).double() for k in ("image", "text", "extra"))
    final = {}
    with torch.no_grad():
        for nproc, h in heads.items():
            final[nproc] = SigLipLoss()(h.encode_image(img), h.encode_text(txt), h.logit_scale, h.logit_bias, h.encode_text(ext))["loss"].item()
    assert final[2] == pytest.approx(final[1], rel=1e-5)
