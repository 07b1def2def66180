"""LLaVA training: splicing, what each stage trains, ZeRO-2/3 on two processes against plain PyTorch,
LoRA save/load, kill -9 and resume, the transformers export, batched generation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava_parts import plain_sgd_step, stage_args
from sailflow.llava.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX

pytestmark = pytest.mark.e2e


def _model(parts, stage="finetune", previous=None, **settings):
    from sailflow.llava.train import build_model

    args = stage_args(parts, stage, Path("unused"), **settings)
    state = load_file(str(Path(previous) / "connector.safetensors")) if previous else None
    torch.manual_seed(0)
    return build_model(args, connector_state=state)


def _batch(parts, model, tokenizer, tower, template="v1", n=4):
    from sailflow.llava.data import LlavaDataset, collate, read_records
    from sailflow.llava.templates import get_template

    records, _ = read_records(parts["records"], parts["images"])
    ds = LlavaDataset(records, get_template(template, tokenizer), tower.preprocess, model.n_image_tokens, 256, tower.image_size)
    return collate([ds[i] for i in range(n)] + [ds[len(ds) - 1]], tokenizer.pad_token_id)  # the last record is text-only


def test_image_features_are_spliced_at_the_placeholder(parts, stage1):
    model, tok, tower = _model(parts, previous=stage1)
    b = _batch(parts, model, tok, tower)
    with torch.no_grad():
        embeds, mask, labels, pos = model.prepare(b["input_ids"], b["attention_mask"], b["labels"], b["pixel_values"])
        feats = model.image_features(b["pixel_values"])
    n = model.n_image_tokens
    assert n == 16  # the tiny CLIP: 32 px / 8 -> 4 x 4 patches, CLS dropped
    for i in range(b["input_ids"].shape[0]):
        ids = b["input_ids"][i][b["attention_mask"][i]]
        where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        text = model.embed_tokens(ids.clamp(min=0))
        if not where:  # text-only: no image positions, the sequence is its text
            torch.testing.assert_close(embeds[i, : len(ids)], text, rtol=0, atol=0)
            assert mask[i].sum() == len(ids)
            continue
        k = where[0]
        torch.testing.assert_close(embeds[i, :k], text[:k], rtol=0, atol=0)
        torch.testing.assert_close(embeds[i, k : k + n], feats[i], rtol=0, atol=0)  # exactly at the placeholder
        torch.testing.assert_close(embeds[i, k + n : len(ids) - 1 + n], text[k + 1 :], rtol=0, atol=0)
        assert (labels[i, k : k + n] == IGNORE_INDEX).all() and mask[i].sum() == len(ids) - 1 + n
        assert pos[i, : len(ids) - 1 + n].tolist() == list(range(len(ids) - 1 + n))


def test_stage1_trains_only_the_connector(parts):
    from sailflow.llava.train import set_trainable

    model, tok, tower = _model(parts, stage="pretrain")
    set_trainable(model, "pretrain", stage_args(parts, "pretrain", Path("x"))["settings"])
    b = _batch(parts, model, tok, tower, template="plain" if False else "v1")
    model(**b).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.multi_modal_projector.named_parameters(prefix="multi_modal_projector")}
    assert all(p.grad.abs().sum() > 0 for p in model.multi_modal_projector.parameters())
    # a text-only batch still reaches the connector (zero-length image features stay in the graph)
    model.zero_grad()
    only_text = {k: v[-1:] for k, v in b.items()}
    assert not bool(only_text["has_image"][0])
    model(**only_text).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.multi_modal_projector.parameters())


def _torchrun(args: dict, tmp: Path, nproc: int, env_extra=None) -> subprocess.CompletedProcess:
    (tmp / "args.json").write_text(json.dumps(args))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions"),
           **(env_extra or {})}
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "sailflow.llava.train", str(tmp / "args.json")],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize("zero,stage", [("zero2", "pretrain"), ("zero3", "finetune")])
def test_zero_on_two_processes_equals_one_plain_pytorch_step(parts, stage1, tmp_path, zero, stage):
    """One optimiser step of global batch 8 (2 processes x 4, DeepSpeed ZeRO, gloo) against the same
    step in plain PyTorch on the 8 samples at once: the loss is the mean over all supervised tokens of
    the step, so the update is the same up to float summation order. SGD keeps the comparison strict
    (an Adam first step is lr * sign(g), which would hide a wrong gradient scale)."""
    from sailflow.llava.data import LlavaDataset, collate, read_records
    from sailflow.llava.templates import get_template
    from sailflow.llava.train import set_trainable

    records = json.loads(Path(parts["captions" if stage == "pretrain" else "records"]).read_text())[:8]
    data = tmp_path / "eight.json"
    data.write_text(json.dumps(records))
    settings = dict(optim="sgd", lr=0.5, global_batch_size=8, per_device_batch_size=4, epochs=1, deepspeed=zero, max_grad_norm=1.0)
    args = stage_args(parts, stage, tmp_path / "out", **settings)
    args["data"] = [{"json": str(data), "images": parts["images"]}]
    if stage == "finetune":
        args["previous"] = str(stage1)
    res = _torchrun(args, tmp_path, 2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    manifest = json.loads((tmp_path / "out" / "config.json").read_text())
    assert manifest["steps"] == 1 and manifest["world"] == 2

    # plain PyTorch: the same model, the 8 samples as one batch, one SGD step with the same clipping
    model, tok, tower = _model(parts, stage=stage, previous=args["previous"])
    set_trainable(model, stage, args["settings"])
    template = get_template(args["template"], tok)
    recs, _ = read_records(str(data), parts["images"])
    ds = LlavaDataset(recs, template, tower.preprocess, model.n_image_tokens, 256, tower.image_size)
    batch = collate([ds[i] for i in range(len(ds))], tok.pad_token_id)
    n_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss = model(**batch, num_items_in_batch=torch.tensor(n_items)).loss
    loss.backward()
    plain_sgd_step(model)
    got = load_file(str(tmp_path / "out" / "connector.safetensors"))
    for k, v in model.multi_modal_projector.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=f"connector {k}")
    if stage == "finetune":
        from transformers import AutoModelForCausalLM

        llm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "language_model")).state_dict()
        for k, v in model.language_model.state_dict().items():
            torch.testing.assert_close(llm[k], v, rtol=0, atol=1e-5, msg=f"llm {k}")
        moved = [k for k, v in model.language_model.state_dict().items() if not torch.equal(v, AutoModelForCausalLM.from_pretrained(parts["llm"]).state_dict()[k])]
        assert moved  # the step changed the LLM: the comparison is not between two untouched models


def test_a_deepspeed_stage_on_one_device_runs_under_torchrun(parts, tmp_path, monkeypatch):
    """The workflow's launch of a ZeRO-2 stage with no GPU (one device): DeepSpeed in the job's own process
    would look for MPI (no launcher variables) and stop; under torchrun with one process it trains."""
    from sailflow.llava.train import launch_stage

    records = json.loads(Path(parts["captions"]).read_text())[:8]
    data = tmp_path / "eight.json"
    data.write_text(json.dumps(records))
    args = stage_args(parts, "pretrain", tmp_path / "out", global_batch_size=4, per_device_batch_size=4, epochs=1, deepspeed="zero2")
    args["data"] = [{"json": str(data), "images": parts["images"]}]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with open(tmp_path / "stage.log", "w") as log:
        launch_stage(args, 0, log)
    text = (tmp_path / "stage.log").read_text()
    assert "--nproc_per_node=1" in text and "deepspeed zero2" in text
    manifest = json.loads((tmp_path / "out" / "config.json").read_text())
    assert manifest["steps"] == 2 and manifest["world"] == 1
    assert load_file(str(tmp_path / "out" / "connector.safetensors"))


KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import sailflow.llava.train as T
    kill_at = int(sys.argv[2])
    make = T._trainer_class
    def patched():
        Trainer, Log = make()
        from transformers import TrainerCallback
        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if kill_at and state.global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        class KillingTrainer(Trainer):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                self.add_callback(Kill())
        return KillingTrainer, Log
    T._trainer_class = patched
    T.train_stage(json.loads(open(sys.argv[1]).read()))
""")


def _run_killable(args: dict, tmp: Path, kill_at: int) -> subprocess.CompletedProcess:
    p = tmp / f"args_{kill_at}.json"
    p.write_text(json.dumps(args))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(p), str(kill_at)], capture_output=True, text=True, env=env, timeout=900)


def test_kill_in_stage2_then_rerun_resumes_and_ends_like_an_uninterrupted_run(parts, stage1, tmp_path):
    settings = dict(global_batch_size=4, per_device_batch_size=2, epochs=2)
    ref = stage_args(parts, "finetune", tmp_path / "ref", **settings)
    ref["previous"] = str(stage1)
    killed = {**ref, "out_dir": str(tmp_path / "killed")}
    assert _run_killable(ref, tmp_path, 0).returncode == 0
    res = _run_killable(killed, tmp_path, 3)  # checkpoints every 2 steps: killed one step after the first
    assert res.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "state" / "checkpoint-2").exists() and not (tmp_path / "killed" / "config.json").exists()
    cut = tmp_path / "killed" / "state" / "checkpoint-4"  # a later save cut off (a time limit mid-save): no trainer_state.json
    cut.mkdir()
    (cut / "model.safetensors").write_bytes(b"\0" * 16)
    res = _run_killable(killed, tmp_path, 0)
    assert res.returncode == 0, res.stderr[-4000:]
    out = res.stderr + res.stdout
    assert "checkpoint-4: incomplete" in out and "[llava] resumed from" in out
    assert out.split("[llava] resumed from")[1].split("\n")[0].strip().endswith("checkpoint-2")
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("ref", "killed"))
    assert a["steps"] == b["steps"] > 3  # the step count continued
    for f in ("connector.safetensors", "language_model/model.safetensors"):
        x, y = load_file(str(tmp_path / "ref" / f)), load_file(str(tmp_path / "killed" / f))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f  # bitwise on CPU
    assert not (tmp_path / "killed" / "state").exists()  # a finished stage keeps no state


def test_gradient_checkpointing_through_the_trainer_trains_like_without(parts, stage1, tmp_path):
    """The stage default (gradient_checkpointing: true, LLaVA's) goes through the Trainer's own call, with
    transformers' arguments; the checkpointed stage ends where the plain one does."""
    import os

    from sailflow.llava.train import train_stage

    (tmp_path / "True").mkdir()
    (tmp_path / "True" / "tower.safetensors").write_bytes(b"left by an earlier run with unlock_tower")
    for on in (False, True):
        args = stage_args(parts, "finetune", tmp_path / str(on), global_batch_size=4, per_device_batch_size=2,
                          gradient_checkpointing=on)
        args["previous"] = str(stage1)
        train_stage(args, log=open(os.devnull, "w"))
    assert not (tmp_path / "True" / "tower.safetensors").exists()  # not this stage's: removed
    for f in ("connector.safetensors", "language_model/model.safetensors"):
        x, y = load_file(str(tmp_path / "False" / f)), load_file(str(tmp_path / "True" / f))
        assert x.keys() == y.keys()
        for k in x:  # the same up to float summation order (the recomputed forward)
            torch.testing.assert_close(y[k], x[k], rtol=1e-4, atol=1e-5, msg=f"{f}: {k}")
    manifest = json.loads((tmp_path / "True" / "config.json").read_text())
    assert (manifest["truncated"], manifest["tokenization_mismatches"]) == (0, 0)  # recorded beside `dropped`


def test_stage_guards_stop_a_run_that_learns_nothing_and_refuse_what_is_not_the_stages(stage1, tmp_path):
    """The silent failures of LLaVA training stop the stage (pitfalls 3-5, 8-9): a NaN loss, a loss or gradient
    norm stuck at 0, an LLM folder with empty tensors; a tower file the manifest does not list is not loaded."""
    import shutil

    from safetensors.torch import save_file

    from sailflow.llava.train import STALL_LOGS, StageError, _check_saved_dir, _health_callback, load_tower_weights

    class State:
        global_step = 7

    health = _health_callback(open(os.devnull, "w"))
    health.on_log(None, State(), None, logs={"loss": 1.2, "grad_norm": 0.5})
    with pytest.raises(StageError, match=r"step 7: \{'loss': nan\} \(not finite\)"):
        health.on_log(None, State(), None, logs={"loss": float("nan"), "grad_norm": 0.5})
    health = _health_callback(open(os.devnull, "w"))
    for _ in range(STALL_LOGS - 1):
        health.on_log(None, State(), None, logs={"loss": 0.0, "grad_norm": 0.0})
    health.on_log(None, State(), None, logs={"loss": 0.3, "grad_norm": 0.1})  # a real step: the count starts again
    for _ in range(STALL_LOGS - 1):
        health.on_log(None, State(), None, logs={"loss": 0.0, "grad_norm": 0.0})
    with pytest.raises(StageError, match=f"exactly 0 for {STALL_LOGS} logged steps"):
        health.on_log(None, State(), None, logs={"loss": 0.0, "grad_norm": 0.0})

    llm = tmp_path / "language_model"
    llm.mkdir()
    with pytest.raises(StageError, match="no weights were saved"):
        _check_saved_dir(llm, None)
    save_file({"w": torch.zeros(2, 3), "b": torch.zeros(0)}, str(llm / "model.safetensors"))  # ZeRO-3's placeholder
    with pytest.raises(StageError, match=r"\['b'\] did not save correctly"):
        _check_saved_dir(llm, None)
    save_file({"w": torch.zeros(2, 3)}, str(llm / "model.safetensors"))
    _check_saved_dir(llm, {"w": torch.ones(2, 3)})
    with pytest.raises(StageError, match=r"\['w'\]"):
        _check_saved_dir(llm, {"w": torch.ones(3, 2)})

    stage = tmp_path / "pretrain"
    shutil.copytree(stage1, stage)
    (stage / "tower.safetensors").write_bytes(b"not a tensor file: loading it would fail")
    assert load_tower_weights(object(), stage) == []  # stage 1 trained only its connector (its manifest says so)


def test_lora_adapter_saved_and_loaded_gives_identical_logits(parts, stage1, tmp_path, monkeypatch):
    import sailflow.llava.train as T
    from sailflow.llava.generate import load_stage

    args = stage_args(parts, "finetune", tmp_path / "lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}, connector_lr=1e-3, epochs=2)
    args["previous"] = str(stage1)
    captured = {}
    save = T.save_stage

    def capture(trainer, model, tokenizer, tower, a, info, out_dir):
        model.eval()
        b = _batch(parts, model, tokenizer, tower)
        with torch.no_grad():
            captured["logits"] = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            captured["batch"] = b
        save(trainer, model, tokenizer, tower, a, info, out_dir)

    monkeypatch.setattr(T, "save_stage", capture)
    T.train_stage(args, log=open(os.devnull, "w"))
    out = tmp_path / "lora"
    assert (out / "adapter" / "adapter_model.safetensors").exists() and not (out / "language_model").exists()
    model, tok, manifest = load_stage(out)
    assert manifest["lora"] is True
    with torch.no_grad():
        logits = model(**{k: v for k, v in captured["batch"].items() if k != "labels"}).logits
    # the adapter is merged into the base on load: equal up to the merge's float rounding
    torch.testing.assert_close(logits, captured["logits"], rtol=1e-5, atol=1e-5)
    base, _, _ = load_stage(stage1)
    with torch.no_grad():
        plain = base(**{k: v for k, v in captured["batch"].items() if k != "labels"}).logits
    assert (plain - logits).abs().max() > 1e-3  # the adapter changed the model: the check above is not vacuous


def test_batched_greedy_answers_equal_one_at_a_time(parts, stage2):
    from sailflow.llava.generate import VisionLanguageModel

    vlm = VisionLanguageModel.from_run(stage2, device="cpu")
    images = [str(Path(parts["images"]) / "img" / f"{i:03d}.png") for i in range(5)]
    questions = ["What colour is the square?", "Is it a square?", "Name a colour.", "What colour is the square?", "Is it a square?"]
    batched = vlm.generate(images, questions, max_new_tokens=6, batch_size=5)
    single = [vlm.generate([im], [q], max_new_tokens=6)[0] for im, q in zip(images, questions)]
    assert batched == single and all(isinstance(a, str) for a in batched)
    assert len({len(vlm.prompt_ids(q)) for q in questions}) > 1  # prompts of different lengths: padding really happened


def test_hf_export_generates_the_same_greedy_tokens(parts, stage2, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from sailflow.llava.export import export_hf
    from sailflow.llava.generate import VisionLanguageModel

    out = tmp_path / "hf"
    summary = export_hf(stage2, out, log=open(os.devnull, "w"))  # raises if the probe's greedy tokens differ
    hf = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()  # stock transformers loads it
    vlm = VisionLanguageModel.from_run(stage2, device="cpu")
    for i in range(3):
        image = str(Path(parts["images"]) / "img" / f"{i:03d}.png")
        prompt = vlm.prompt_ids("What colour is the square?")
        ids = []
        for t in prompt:
            ids += [summary["image_token_id"]] * vlm.model.n_image_tokens if t == IMAGE_TOKEN_INDEX else [t]
        with torch.no_grad():
            gen = hf.generate(input_ids=torch.tensor([ids]), pixel_values=vlm._pixels([image]), max_new_tokens=6, do_sample=False,
                              eos_token_id=vlm.template.stop_token_ids(), pad_token_id=vlm.tokenizer.pad_token_id)[0, len(ids):].tolist()
        stops = vlm.template.stop_token_ids()
        gen = gen[: next((j for j, t in enumerate(gen) if t in stops), len(gen))]
        ours = vlm.model.generate([prompt], vlm._pixels([image]), max_new_tokens=6, stop_token_ids=stops,
                                  pad_token_id=vlm.tokenizer.pad_token_id)[0]
        assert gen == ours


def test_group_by_modality_is_off_when_the_data_has_one_modality(parts, tmp_path):
    """LLaVA's modality-grouped sampler needs both modalities: on all-image captions the stage runs with a
    random sampler, says so in its log and records it in its manifest (Quilt-LLaVA's all-image data)."""
    import io

    from sailflow.llava.train import group_by_modality, train_stage

    assert group_by_modality(True, n_images=5, n_text=3) is True
    assert group_by_modality(True, n_images=5, n_text=0) is False and group_by_modality(True, n_images=0, n_text=3) is False
    assert group_by_modality(False, n_images=5, n_text=3) is False
    log = io.StringIO()
    out = tmp_path / "pretrain"
    train_stage(stage_args(parts, "pretrain", out, group_by_modality_length=True), log=log)
    assert "group_by_modality_length: off, the data has no text-only records" in log.getvalue()
    assert json.loads((out / "config.json").read_text())["group_by_modality_length"] is False
