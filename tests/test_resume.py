"""Resumable training resumes only an unfinished run on the very same inputs (issue: stale state).

A finished run, or a run whose embeddings were rewritten (a new text ``max_length``, a new pooling),
must train from scratch: its head equals a clean training on the new embeddings, bitwise on CPU.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sailflow.align.train as T
from sailflow.align.heads import AlignmentHead
from sailflow.embeddings import save_embeddings
from sailflow.resume import finish_state, prepare_state, run_identity

SETTINGS = dict(head="star", dim=8, width_factor=2, loss="siglip", optimizer="lion", lr=1e-3, weight_decay=1e-4,
                betas=[0.9, 0.99], decay_all=False, batch_size=16, epochs=3, warmup=0.1, logit_scale=20.0, logit_bias=-10.0,
                precision="fp32", seed=1, log_every=2, checkpoint_every=2, subset=None)


def _write(d: Path, seed: int, text_dim: int = 5, n: int = 48) -> dict:
    """One chunk of image/text embeddings (the text ones drawn from ``seed``) at fixed paths."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    img = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 6), dtype=np.float32))
    txt = torch.from_numpy(rng.standard_normal((n, text_dim), dtype=np.float32))
    save_embeddings(d / "image_0000.safetensors", img, ids, {"chunk": "0000", "backbone": "v"})
    save_embeddings(d / "text_0000.safetensors", txt, ids, {"chunk": "0000", "backbone": "t", "max_length": str(seed)},
                    present=np.ones(n, np.uint8))
    return {"image": [str(d / "image_0000.safetensors")], "text": [str(d / "text_0000.safetensors")]}


def _train(files: dict, out: Path, **changes) -> str:
    log = io.StringIO()
    T.train(dict(files, out_dir=str(out), meta={}, settings={**SETTINGS, **changes}), log=log)
    return log.getvalue()


def _head(out: Path) -> dict:
    return load_file(str(out / "head.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("text_dim", [5, 7], ids=["same_width", "new_width"])
def test_finished_run_on_rewritten_embeddings_trains_from_scratch(tmp_path, text_dim):
    data, run, clean = tmp_path / "emb", tmp_path / "run", tmp_path / "clean"
    data.mkdir()
    _train(_write(data, seed=1), run)
    assert not (run / "state").exists()  # a finished run keeps no state to resume
    new = _write(data, seed=2, text_dim=text_dim)  # re-encoded: new values (and, for a new pooling, a new width)
    log = _train(new, run)
    assert "resumed" not in log
    _train(new, clean)
    assert _equal(_head(run), _head(clean))
    assert (run / "train_log.jsonl").read_text().count("\n") == (clean / "train_log.jsonl").read_text().count("\n")


def test_forced_rerun_of_a_finished_run_starts_from_scratch(tmp_path):
    data, run = tmp_path / "emb", tmp_path / "run"
    data.mkdir()
    files = _write(data, seed=1)
    _train(files, run)
    first = _head(run)
    assert "resumed" not in _train(files, run)  # snakemake --forcerun align: same inputs, trained again
    assert _equal(_head(run), first)


def _interrupted(files: dict, out: Path, monkeypatch) -> None:
    """Train until the final write, then fail (a crash after the last checkpoint): state is left."""
    def crash(*a, **k):
        raise KeyboardInterrupt("killed")

    for name in ("head.safetensors", "config.json"):  # as Snakemake does before it reruns a job
        (out / name).unlink(missing_ok=True)
    monkeypatch.setattr(AlignmentHead, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(files, out)
    monkeypatch.undo()
    assert (out / "state" / "state.safetensors").exists() and not (out / "head.safetensors").exists()


def test_unfinished_run_resumes_only_on_the_same_inputs(tmp_path, monkeypatch):
    data, run, clean = tmp_path / "emb", tmp_path / "run", tmp_path / "clean"
    data.mkdir()
    files = _write(data, seed=1)
    _train(files, clean)
    _interrupted(files, run, monkeypatch)
    log = _train(files, run)  # same inputs: resumes, and ends where an uninterrupted run ends
    assert "resumed from step 8" in log
    assert _equal(_head(run), _head(clean))

    _interrupted(files, run, monkeypatch)
    new = _write(data, seed=3)
    log = _train(new, run)
    assert "resumed" not in log and "starting fresh" in log and "text inputs changed" in log
    _train(new, clean)
    assert _equal(_head(run), _head(clean))

    _interrupted(new, run, monkeypatch)
    log = _train(new, run, lr=2e-3)
    assert "resumed" not in log and "settings changed" in log


def test_prepare_state_vets_identity_and_finish_removes_it(tmp_path):
    f = tmp_path / "x.safetensors"
    save_embeddings(f, torch.zeros(2, 3), np.arange(2), {})
    ident = run_identity({"lr": 1}, {"image": [f]}, world=1)
    state = tmp_path / "state"
    log = io.StringIO()
    assert prepare_state(state, ident, log) is False and json.loads((state / "identity.json").read_text()) == ident
    (state / "ckpt").write_text("x")
    assert prepare_state(state, ident, log) is True and (state / "ckpt").exists()
    assert prepare_state(state, run_identity({"lr": 1}, {"image": [f]}, world=2), log) is False
    assert "world changed: 1 -> 2" in log.getvalue() and not (state / "ckpt").exists()
    # a state folder without its identity (e.g. written by older code) is never trusted
    (state / "identity.json").unlink()
    (state / "ckpt").write_text("x")
    assert prepare_state(state, ident, log) is False and not (state / "ckpt").exists()
    save_embeddings(f, torch.ones(2, 3), np.arange(2), {})  # rewritten in place
    assert run_identity({"lr": 1}, {"image": [f]}, world=1) != ident
    finish_state(state)
    assert not state.exists()


@pytest.mark.e2e
def test_workflow_retrains_from_scratch_after_an_embedding_option_changes(workdir):
    """The demo head, then a new text ``max_length`` (new embeddings, same width): the align job
    must not resume the finished run's state; its head equals a clean training on the new embeddings."""
    from conftest import repo_config, snakemake, write_config

    cfg = repo_config()
    cfg["demo"].update(n_train=40, n_eval=8)
    cfg["runs"]["demo"]["align"].update(batch_size=16, epochs=3, checkpoint_every=1)
    target = "results/demo/align/head.safetensors"
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2", target)
    align = workdir / "results/demo/align"
    old = _head(align)
    cfg["backbones"]["minilm"]["max_length"] = 4  # truncates the captions: new text embeddings
    write_config(workdir, cfg)
    out = snakemake(workdir, "--cores", "2", target).stdout
    log = (workdir / "logs/demo/align.log").read_text()
    assert "resumed" not in log
    retrained = _head(align)
    assert not _equal(retrained, old)
    shutil.rmtree(align)  # a clean training on the same (new) embeddings
    assert "encode_texts" not in snakemake(workdir, "-n", target).stdout
    snakemake(workdir, "--cores", "2", target)
    assert _equal(_head(align), retrained), out
