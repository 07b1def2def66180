"""Alignment tuning: heads, losses (single and 2-process), optimiser, schedule, loader, resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
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
    head = AlignmentHead(6, 5, dim=4, head="star", width_factor=2)
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
    g = torch.Generator().manual_seed(1)
    data = {"img": torch.randn(8, 6, generator=g), "txt": torch.randn(8, 5, generator=g), "ext": torch.randn(8, 5, generator=g)}
    torch.multiprocessing.spawn(_worker, args=(2, f"file://{tmp_path}/init", data, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    head = AlignmentHead(6, 5, dim=4, head="star", width_factor=2)
    for name, loss_fn in (("siglip", SigLipLoss()), ("clip", ClipLoss())):
        head.zero_grad()
        out = loss_fn(head.encode_image(data["img"]), head.encode_text(data["txt"]), head.logit_scale, head.logit_bias,
                      head.encode_text(data["ext"]))
        out["loss"].backward()
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{name}_{rank}.pt", weights_only=True)
            torch.testing.assert_close(got["loss"], out["loss"].detach(), rtol=1e-6, atol=1e-7)
            expected = {k: p.grad for k, p in head.named_parameters() if p.grad is not None}
            assert got["grads"].keys() == expected.keys()
            for k, g in expected.items():
                torch.testing.assert_close(got["grads"][k], g, rtol=1e-5, atol=1e-7, msg=f"{name} {k}")


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
    from sailflow.align.train import load_head

    src = AlignmentHead(16, 12, dim=8, head="star", width_factor=2)
    torch.save({"epoch": 30, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "sail.pt")
    convert(tmp_path / "sail.pt", tmp_path / "out", head="star", dim=8, width_factor=2)
    loaded = load_head(tmp_path / "out")
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


def _train_script(tmp_path, out, steps_sleep=0.0):
    return textwrap.dedent(f"""
        import glob, json, time, sys
        import sailflow.align.train as T
        if {steps_sleep}:
            orig = T.prefetch
            def slow(*a, **k):
                for item in orig(*a, **k):
                    time.sleep({steps_sleep}); yield item
            T.prefetch = slow
        d = {str(tmp_path)!r}
        args = dict(image=sorted(glob.glob(d + "/image_*.safetensors")), text=sorted(glob.glob(d + "/text_*.safetensors")),
                    extra=sorted(glob.glob(d + "/extra_*.safetensors")), out_dir={str(out)!r}, meta={{}},
                    settings=dict(head="star", dim=8, width_factor=2, loss="siglip", optimizer="lion", lr=1e-3,
                                  weight_decay=1e-4, betas=[0.9, 0.99], decay_all=False, batch_size=16, epochs=6,
                                  warmup=0.1, logit_scale=20.0, logit_bias=-10.0, precision="fp32", seed=1,
                                  log_every=2, checkpoint_every=3, subset=None))
        T.train(args, log=sys.stdout)
    """)


def test_kill_mid_training_then_resume_is_bitwise_identical(tmp_path):
    _chunks(tmp_path, [40, 30, 30])
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, "-c", _train_script(tmp_path, ref)], check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-c", _train_script(tmp_path, killed, steps_sleep=0.3)],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    state = killed / "state" / "state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (killed / "head.safetensors").exists()
    out = subprocess.run([sys.executable, "-c", _train_script(tmp_path, killed)], check=True, capture_output=True, text=True)
    assert "resumed from step" in out.stdout
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
    from sailflow.align.train import load_head, train

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
    assert load_head(tmp_path / "o").config["head"] == "linear"


def test_torchrun_two_processes_train_like_one(tmp_path):
    """The real trainer under torchrun (2 CPU processes, gloo): same head as one process, up to
    float summation order."""
    import json

    from sailflow.align.train import load_head

    _chunks(tmp_path, [40, 24])
    settings = dict(head="star", dim=8, width_factor=2, loss="siglip", optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                    betas=[0.9, 0.99], decay_all=False, batch_size=16, epochs=2, warmup=1, logit_scale=20.0, logit_bias=-10.0,
                    precision="fp32", seed=3, log_every=2, checkpoint_every=100, subset=None)
    heads = {}
    for nproc in (1, 2):
        args = dict(image=sorted(map(str, tmp_path.glob("image_*.safetensors"))), text=sorted(map(str, tmp_path.glob("text_*.safetensors"))),
                    extra=sorted(map(str, tmp_path.glob("extra_*.safetensors"))), out_dir=str(tmp_path / f"run{nproc}"), meta={}, settings=settings)
        (tmp_path / f"args{nproc}.json").write_text(json.dumps(args))
        torchrun = Path(sys.executable).parent / "torchrun"
        subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "sailflow.align.train", str(tmp_path / f"args{nproc}.json")],
                       check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        heads[nproc] = load_head(tmp_path / f"run{nproc}")
        assert json.loads((tmp_path / f"run{nproc}" / "config.json").read_text())["world"] == nproc
    for (k, a), b in zip(heads[1].state_dict().items(), heads[2].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
