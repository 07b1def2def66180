"""LLaVA with an encoder-decoder LLM (a tiny Flan-T5, as CLIP-FlanT5): the image and the prompt spliced into
the encoder, the answer as decoder labels; the two stages on the Trainer, greedy generation, VQAScore,
save/load and resume.

Everything is built here (tests/llava_parts.py's tiny CLIP and coloured squares, :mod:`sailflow.llava.tiny_t5`'s
T5 and tokenizer). Expected layouts are written out: ``pieces(text)`` is ``text`` tokenized alone without the
``</s>`` T5 appends, ``EOS`` / ``X`` (the image) / ``PAD`` spelled out.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_losses
from llava_parts import make_images, make_records, plain_sgd_step, stage_args, texts
from sailflow.llava.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, VICUNA_SYSTEM

pytestmark = pytest.mark.e2e

X = IMAGE_TOKEN_INDEX
PAD, EOS = 0, 1  # T5's ids (PAD is also the decoder start token)
N_IMAGE = 16  # the tiny CLIP: 32 px / 8 -> 4 x 4 patch tokens


def _quiet():
    return open(os.devnull, "w")


@pytest.fixture(scope="module")
def t5parts(tmp_path_factory):
    """A tiny CLIP tower, a tiny T5 (d_model 32, 2 + 2 layers) with a T5 tokenizer trained on the parts'
    texts, 16 coloured squares, their stage-1 captions and stage-2 records (every third one two turns, and
    two text-only ones): the keys of tests/llava_parts.py's ``build_parts``."""
    from sailflow.backbones.tiny import build_tiny
    from sailflow.llava.tiny_t5 import build_tiny_t5, train_t5_tokenizer

    root = tmp_path_factory.mktemp("t5_parts")
    clip = build_tiny("clip", root / "clip", image_size=32, patch_size=8)
    train_t5_tokenizer(texts(), root / "tok", vocab_size=200)
    llm = build_tiny_t5(root / "t5", root / "tok", d_model=32, layers=2, heads=2, seed=0)
    images = make_images(root)
    return {"clip": str(clip), "llm": str(llm), "records": str(make_records(root, images)), "images": str(root), "root": root,
            "captions": str(make_records(root, images, captions=True))}


@pytest.fixture(scope="module")
def exact_parts(t5parts, tmp_path_factory):
    """The same parts with the T5 saved again without dropout (Flan-T5's 0.1; here it would draw differently
    in two computations that the tests compare)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path_factory.mktemp("t5_no_dropout") / "t5"
    AutoModelForSeq2SeqLM.from_pretrained(t5parts["llm"], dropout_rate=0.0).save_pretrained(out)
    AutoTokenizer.from_pretrained(t5parts["llm"]).save_pretrained(out)
    return {**t5parts, "llm": str(out)}


def t5_args(parts, stage: str, out_dir: Path, template: str | None = None, **settings) -> dict:
    args = stage_args(parts, stage, out_dir, **settings)
    args["llm"] = {"name": "tiny_t5", "path": parts["llm"]}
    args["template"] = template or ("t5_plain_split_text" if stage == "pretrain" else "t5_v1")
    return args


# stage 1: 16 captions, 4 per step, 3 epochs = 12 steps; a checkpoint at step 6 (inside epoch 1)
STAGE1 = dict(lr=1e-2, global_batch_size=4, per_device_batch_size=4, epochs=3)
STAGE1_RUN = dict(checkpoint_every=6)


@pytest.fixture(scope="module")
def t5_stage1(t5parts, tmp_path_factory):
    from sailflow.llava.train import train_stage

    out = tmp_path_factory.mktemp("t5_stage1") / "pretrain"
    args = {**t5_args(t5parts, "pretrain", out, **STAGE1), **STAGE1_RUN}
    info = train_stage(args, log=_quiet())
    return out, args, info


@pytest.fixture(scope="module")
def t5_stage2(t5parts, t5_stage1, tmp_path_factory):
    """Stage 2 (the whole T5 and the connector), with the in-memory model's logits on a batch captured when
    the stage saves (for the save/load round trip)."""
    import sailflow.llava.train as T

    out = tmp_path_factory.mktemp("t5_stage2") / "finetune"
    args = t5_args(t5parts, "finetune", out, lr=3e-3, global_batch_size=4, per_device_batch_size=4, epochs=10)
    args["previous"] = str(t5_stage1[0])
    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "save_stage", _capturing_save(T.save_stage, t5parts, "t5_v1", captured))
        info = T.train_stage(args, log=_quiet())
    return out, info, captured


def _capturing_save(save, parts, template, captured):
    def capture(trainer, model, tokenizer, tower, a, info, out_dir):
        model.eval()
        b = _batch(parts, model, tokenizer, tower, template)
        with torch.no_grad():
            captured["logits"] = model(**b).logits
        captured["batch"] = b
        save(trainer, model, tokenizer, tower, a, info, out_dir)

    return capture


def _model(parts, stage="pretrain", previous=None):
    from sailflow.llava.train import build_model, set_trainable

    args = t5_args(parts, stage, Path("unused"))
    state = load_file(str(Path(previous) / "connector.safetensors")) if previous else None
    torch.manual_seed(0)
    model, tok, tower = build_model(args, connector_state=state)
    set_trainable(model, stage, args["settings"])
    return model, tok, tower


def _dataset(parts, model, tok, tower, template: str, log=None):
    from sailflow.llava.data import LlavaDataset, read_records
    from sailflow.llava.templates import get_template

    records, _ = read_records(parts["captions" if template.startswith("t5_plain") else "records"], parts["images"])
    return LlavaDataset(records, get_template(template, tok), tower.preprocess, model.n_image_tokens, 256, tower.image_size,
                        log=log or _quiet())


def _batch(parts, model, tok, tower, template, idx=(0, 1, 2, -1)):
    from sailflow.llava.data import collate

    ds = _dataset(parts, model, tok, tower, template)
    return collate([ds[i % len(ds)] for i in idx], tok.pad_token_id)


def pieces(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


class Calls:
    """The keyword arguments of every call of a module (a forward pre-hook)."""

    def __init__(self, module):
        self.kwargs: list[dict] = []
        self.handle = module.register_forward_pre_hook(lambda m, a, kw: self.kwargs.append(kw), with_kwargs=True)


# ---- splicing, labels and loss ------------------------------------------------------------------------
def test_stage1_encoder_gets_the_image_and_t5_gets_the_captions_as_labels(t5parts):
    model, tok, tower = _model(t5parts, "pretrain")
    assert model.is_encoder_decoder and model.n_image_tokens == N_IMAGE
    b = _batch(t5parts, model, tok, tower, "t5_plain", idx=(0, 1, 3))  # captions "A red/green/yellow square."
    assert b["input_ids"].tolist() == [[EOS, X, EOS]] * 3  # "<image>": </s>, the image, </s>
    expected = [[*pieces(tok, f"A {c} square."), EOS] for c in ("red", "green", "yellow")]
    width = max(map(len, expected))
    assert b["labels"].tolist() == [e + [IGNORE_INDEX] * (width - len(e)) for e in expected]

    calls = Calls(model.language_model)
    out = model(**b)
    (kw,) = calls.kwargs
    # the decoder reads the labels shifted right behind the start token (pad), -100 -> pad
    assert kw["decoder_input_ids"].tolist() == [[PAD] + [t if t != IGNORE_INDEX else PAD for t in row[:-1]] for row in b["labels"].tolist()]
    assert kw["decoder_attention_mask"].tolist() == (b["labels"] != IGNORE_INDEX).tolist()
    # the encoder: </s>, the 16 image features, </s>; every position attended
    embeds, feats = kw["inputs_embeds"], model.image_features(b["pixel_values"])
    eos = model.embed_tokens(torch.tensor(EOS))
    assert embeds.shape == (3, 1 + N_IMAGE + 1, 32) and kw["attention_mask"].all()
    for i in range(3):
        torch.testing.assert_close(embeds[i, 0], eos, rtol=0, atol=0)
        torch.testing.assert_close(embeds[i, 1 : 1 + N_IMAGE], feats[i], rtol=0, atol=0)
        torch.testing.assert_close(embeds[i, -1], eos, rtol=0, atol=0)
    # the loss is T5's own loss given these labels (the mean over the caption tokens and </s>)
    with torch.no_grad():
        own = model.language_model(inputs_embeds=embeds, attention_mask=kw["attention_mask"], labels=b["labels"]).loss
    torch.testing.assert_close(out.loss.detach(), own, rtol=1e-6, atol=1e-6)
    assert out.logits.shape == (3, width, len(tok))

    out.loss.backward()  # stage 1: only the connector learns
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {f"multi_modal_projector.{n}" for n, _ in model.multi_modal_projector.named_parameters()}
    assert all(p.grad.abs().sum() > 0 for p in model.multi_modal_projector.parameters())


def test_stage2_flattens_turns_and_supervises_one_answer_per_sample(t5parts, tmp_path):
    from sailflow.llava.data import collate

    model, tok, tower = _model(t5parts, "finetune")
    log = tmp_path / "data.log"
    with open(log, "w") as f:
        ds = _dataset(t5parts, model, tok, tower, "t5_v1", log=f)
    records = json.loads(Path(t5parts["records"]).read_text())
    multi = [r for r in records if len(r["conversations"]) == 4]
    assert len(ds) == len(records) + len(multi) and len(multi) == 6
    assert "6 multi-turn records flattened into 12 single-turn ones" in log.read_text()
    ids = [r.id for r in ds.records]
    assert ids[:3] == ["r0", "r0-turn1", "r1"]

    head = [*pieces(tok, VICUNA_SYSTEM + " USER: "), EOS, X]
    q1, q2 = "What colour is the square?", "Is it a square?"
    item0, item1, text_only = ds[0], ds[1], ds[len(ds) - 1]
    assert item0["input_ids"].tolist() == head + [*pieces(tok, f"\n{q1} ASSISTANT: "), EOS]
    assert item0["labels"].tolist() == [*pieces(tok, "red"), EOS]  # the answer alone, all supervised
    assert item1["input_ids"].tolist() == head + [*pieces(tok, f"\n{q2} ASSISTANT: "), EOS]  # the image again
    assert item1["labels"].tolist() == [*pieces(tok, "Yes"), EOS]
    assert not text_only["has_image"] and X not in text_only["input_ids"].tolist()
    assert text_only["labels"].tolist() == [*pieces(tok, "red"), EOS]

    b = collate([item0, item1, text_only], tok.pad_token_id)
    L = max(len(item0["input_ids"]), len(text_only["input_ids"]))
    assert b["input_ids"].shape == (3, L) and b["attention_mask"].sum(1).tolist() == [len(it["input_ids"]) for it in (item0, item1, text_only)]
    calls = Calls(model.language_model)
    loss = model(**b).loss
    mask = calls.kwargs[0]["attention_mask"]  # spliced: the image's 16 positions instead of its placeholder
    assert mask.sum(1).tolist() == [len(item0["input_ids"]) - 1 + N_IMAGE, len(item1["input_ids"]) - 1 + N_IMAGE,
                                    len(text_only["input_ids"])]
    loss.backward()  # stage 2: the whole T5 (encoder, decoder, shared embeddings, head) and the connector
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.language_model.parameters())
    assert all(p.grad is not None for p in model.multi_modal_projector.parameters())
    assert not any(n.startswith("vision_tower") for n in grads)

    # the loss of a step is the mean over all its supervised tokens (num_items_in_batch): two halves = the whole
    n = int((b["labels"] != IGNORE_INDEX).sum())
    with torch.no_grad():
        whole = model(**b).loss
        halves = sum(model(**{k: v[s] for k, v in b.items()}, num_items_in_batch=torch.tensor(n)).loss
                     for s in (slice(0, 2), slice(2, 3)))
    torch.testing.assert_close(halves, whole, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(exact_parts):
    model, tok, tower = _model(exact_parts, "finetune")
    model.train()
    b = _batch(exact_parts, model, tok, tower, "t5_v1")
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.language_model.is_gradient_checkpointing
        model.zero_grad()
        model(**b).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-5, msg=n)  # the same up to float summation order


def test_split_text_redraws_its_split_each_epoch(t5parts):
    from sailflow.llava.templates import caption_split

    model, tok, tower = _model(t5parts, "pretrain")
    ds = _dataset(t5parts, model, tok, tower, "t5_plain_split_text")
    captions = [r.conversations[1]["value"] for r in ds.records]
    draws = {}
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            split = caption_split(captions[i], seed=0, epoch=epoch, index=i)
            assert item["input_ids"].tolist() == [EOS, X, *pieces(tok, captions[i][:split]), EOS]
            assert item["labels"].tolist() == [*pieces(tok, captions[i][split:]), EOS]
            draws.setdefault(epoch, []).append(split)
    assert draws[0][: len(ds)] == draws[0][len(ds) :]  # the same epoch draws the same again
    assert draws[0][: len(ds)] != draws[1]  # another epoch, other splits


# ---- training ------------------------------------------------------------------------------------------
def test_stages_train_and_the_loss_decreases(t5_stage1, t5_stage2):
    out1, _, info1 = t5_stage1
    out2, info2, _ = t5_stage2
    assert info1["steps"] == 12 and info1["encoder_decoder"] and info1["bf16"] is False  # CPU: fp32
    l1, l2 = train_losses(out1 / "train_log.jsonl"), train_losses(out2 / "train_log.jsonl")
    assert all(math.isfinite(x) for x in l1 + l2)
    assert sum(l1[-3:]) < sum(l1[:3])
    assert sum(l2[-3:]) < 0.8 * sum(l2[:3])
    m = json.loads((out2 / "config.json").read_text())
    assert m["template"] == "t5_v1" and m["trained"] == ["connector.safetensors", "language_model/"]
    assert m["samples"] == 24  # 16 image records + 6 second turns + 2 text-only


def test_save_and_load_give_the_same_logits(t5_stage2):
    from transformers import T5ForConditionalGeneration

    from sailflow.llava.generate import load_stage

    out, _, captured = t5_stage2
    model, tok, manifest = load_stage(out)
    assert isinstance(model.language_model, T5ForConditionalGeneration) and model.is_encoder_decoder
    with torch.no_grad():
        logits = model(**captured["batch"]).logits
    torch.testing.assert_close(logits, captured["logits"], rtol=1e-6, atol=1e-6)


def test_lora_adapter_on_t5_saved_and_loaded(t5parts, t5_stage1, tmp_path, monkeypatch):
    import sailflow.llava.train as T
    from sailflow.llava.generate import load_stage

    args = t5_args(t5parts, "finetune", tmp_path / "lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}, connector_lr=1e-3,
                   lr=1e-2, global_batch_size=8, per_device_batch_size=8)
    args["previous"] = str(t5_stage1[0])
    captured = {}
    monkeypatch.setattr(T, "save_stage", _capturing_save(T.save_stage, t5parts, "t5_v1", captured))
    T.train_stage(args, log=_quiet())
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").exists()
    model, _, manifest = load_stage(tmp_path / "lora")
    assert manifest["lora"] is True
    with torch.no_grad():
        logits = model(**captured["batch"]).logits
    torch.testing.assert_close(logits, captured["logits"], rtol=1e-5, atol=1e-5)  # merged on load: float rounding
    base, _, _ = load_stage(t5_stage1[0])
    with torch.no_grad():
        assert (base(**captured["batch"]).logits - logits).abs().max() > 1e-3  # the adapter changed the model


class Stopped(Exception):
    pass


def test_interrupted_stage1_resumes_in_its_epoch_and_ends_like_an_uninterrupted_run(t5parts, t5_stage1, tmp_path, monkeypatch):
    """Stopped at step 7 (epoch 1 of 3; the checkpoint is at step 6), then run again: it resumes inside epoch
    1 and ends bitwise equal to the uninterrupted run. The splits of t5_plain_split_text depend on the
    epoch, so a resumed run that lost the epoch would train on other samples."""
    import sailflow.llava.train as T
    from sailflow.llava.data import LlavaDataset

    ref_out, ref_args, _ = t5_stage1
    args = {**ref_args, "out_dir": str(tmp_path / "pretrain")}
    epochs = []
    set_epoch = LlavaDataset.set_epoch
    monkeypatch.setattr(LlavaDataset, "set_epoch", lambda self, e: (epochs.append(e), set_epoch(self, e))[1])
    make = T._trainer_class

    def stopping():
        from transformers import TrainerCallback

        Trainer, Log = make()

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 7:
                    raise Stopped("stopped at step 7")

        class StoppingTrainer(Trainer):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                self.add_callback(Stop())

        return StoppingTrainer, Log

    monkeypatch.setattr(T, "_trainer_class", stopping)
    with pytest.raises(Stopped):
        T.train_stage(args, log=_quiet())
    assert sorted(set(epochs)) == [0, 1]
    assert (tmp_path / "pretrain" / "state" / "checkpoint-6").exists() and not (tmp_path / "pretrain" / "config.json").exists()

    monkeypatch.setattr(T, "_trainer_class", make)
    epochs.clear()
    log = tmp_path / "resume.log"
    with open(log, "w") as f:
        info = T.train_stage(args, log=f)
    assert "resumed from" in log.read_text() and "checkpoint-6" in log.read_text()
    assert epochs[0] == 1 and sorted(set(epochs)) == [1, 2]  # resumed inside epoch 1
    assert info["steps"] == 12
    a, b = load_file(str(ref_out / "connector.safetensors")), load_file(str(tmp_path / "pretrain" / "connector.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero3_on_two_processes_equals_one_plain_pytorch_step(exact_parts, t5_stage1, tmp_path):
    """Stage 2 on T5 under DeepSpeed ZeRO-3 (2 processes x 4 samples, gloo) against one plain PyTorch SGD step
    on the 8 samples at once: the step's loss is the mean over all its decoder labels (the Trainer counts every
    label of an encoder-decoder, none is shifted away), and the gathered T5 (tied embeddings) saves whole."""
    from transformers import AutoModelForSeq2SeqLM

    from sailflow.llava.data import LlavaDataset, collate, read_records
    from sailflow.llava.templates import get_template

    parts = exact_parts  # no dropout: it would draw differently in two processes than in one
    records = json.loads(Path(parts["records"]).read_text())[2:8]  # r2 ... r7; r3 and r6 have two turns: 8 samples
    data = tmp_path / "eight.json"
    data.write_text(json.dumps(records))
    args = t5_args(parts, "finetune", tmp_path / "out", optim="sgd", lr=0.5, global_batch_size=8, per_device_batch_size=4,
                   deepspeed="zero3", max_grad_norm=1.0)
    args["data"] = [{"json": str(data), "images": parts["images"]}]
    args["previous"] = str(t5_stage1[0])
    (tmp_path / "args.json").write_text(json.dumps(args))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions")}
    res = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "sailflow.llava.train",
                          str(tmp_path / "args.json")], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["steps"] == 1

    model, tok, tower = _model(parts, "finetune", previous=args["previous"])
    model.train()  # as the Trainer does (no dropout left to draw)
    recs, _ = read_records(str(data), parts["images"])
    ds = LlavaDataset(recs, get_template("t5_v1", tok), tower.preprocess, model.n_image_tokens, 256, tower.image_size, log=_quiet())
    assert len(ds) == 8
    batch = collate([ds[i] for i in range(8)], tok.pad_token_id)
    model(**batch).loss.backward()  # the mean over all the decoder labels of the 8 samples
    plain_sgd_step(model)
    got = load_file(str(tmp_path / "out" / "connector.safetensors"))
    for k, v in model.multi_modal_projector.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=f"connector {k}")
    llm = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "out" / "language_model")).state_dict()
    for k, v in model.language_model.state_dict().items():
        torch.testing.assert_close(llm[k], v, rtol=0, atol=1e-5, msg=f"llm {k}")
    before = AutoModelForSeq2SeqLM.from_pretrained(parts["llm"]).state_dict()
    assert not torch.equal(llm["shared.weight"], before["shared.weight"])  # the step moved T5: not two untouched models


def test_precision_and_template_are_checked(t5parts, tmp_path):
    from sailflow.llava.train import StageError, choose_precision, train_stage

    with pytest.raises(StageError, match="T5 overflows in fp16"):
        choose_precision("fp16", encoder_decoder=True, bf16_ok=True)
    assert choose_precision("auto", encoder_decoder=True, bf16_ok=True)[0] is True  # a bf16 GPU
    assert choose_precision("bf16", encoder_decoder=True, bf16_ok=False)[0] is False  # else fp32, never fp16
    assert choose_precision("auto", encoder_decoder=False, bf16_ok=False)[0] is False
    with pytest.raises(StageError, match="fp16"):
        train_stage(t5_args(t5parts, "pretrain", tmp_path / "fp16", precision="fp16"), log=_quiet())
    with pytest.raises(StageError, match=r"template 'plain' does not suit llm 'tiny_t5'.*t5_plain_split_text"):
        train_stage(t5_args(t5parts, "pretrain", tmp_path / "plain", template="plain"), log=_quiet())


# ---- generation and VQAScore ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm(t5_stage2):
    from sailflow.llava.generate import VisionLanguageModel

    return VisionLanguageModel.from_run(t5_stage2[0], device="cpu")


def test_batched_greedy_answers_equal_one_at_a_time(t5parts, vlm):
    from sailflow.llava.answer import answer_lines
    from sailflow.llava.benchmarks import Item

    img = Path(t5parts["images"]) / "img"
    qs = ["What colour is the square?", "Is it a square?", "Name a colour.", "Describe the square in a few words, please."]
    items = [Item(question_id=i, image=str(img / f"{i:03d}.png"), question=qs[i % 4]) for i in range(7)]
    items.append(Item(question_id="text-only", image=None, question="Name a colour."))
    batched = answer_lines(vlm, items, "", 6, batch_size=4, model_id="t5")
    single = answer_lines(vlm, items, "", 6, batch_size=1, model_id="t5")
    assert batched == single
    assert len({len(vlm.prompt_ids(q)) for q in qs}) > 1  # encoder prompts of different lengths: padding happened
    answers = [x["text"] for x in batched]
    assert len(set(answers)) > 1 and all(isinstance(a, str) for a in answers)  # not one answer for everything
    stream = io.StringIO()
    assert vlm.chat(items[1].image, items[1].question, max_new_tokens=6, stream=True, file=stream) == answers[1]
    assert stream.getvalue().strip() == answers[1]

    # token level: the model's own generate, a batch against one prompt at a time, the start token dropped
    m, stops, pad = vlm.model, vlm.template.stop_token_ids(), vlm.tokenizer.pad_token_id
    prompts = [vlm.prompt_ids(it.question, it.image is not None) for it in items]
    pixels = vlm._pixels([it.image for it in items])
    together = m.generate(prompts, pixels, max_new_tokens=6, stop_token_ids=stops, pad_token_id=pad)
    alone = [m.generate([p], pixels[i : i + 1], max_new_tokens=6, stop_token_ids=stops, pad_token_id=pad)[0] for i, p in enumerate(prompts)]
    assert together == alone and any(together)
    assert all(len(a) <= 6 and EOS not in a for a in together)
    # by hand: greedy decoding from the decoder start token, one forward pass per token
    for i in (0, len(items) - 1):
        answer = []
        with torch.no_grad():
            for _ in range(6):
                dec = torch.tensor([[PAD] + answer])
                step = int(m(torch.tensor([prompts[i]]), pixel_values=pixels[i : i + 1], decoder_input_ids=dec).logits[0, -1].argmax())
                if step in stops:
                    break
                answer.append(step)
        assert together[i] == answer


def test_vqascore_equals_a_teacher_forced_computation(t5parts, vlm):
    from sailflow.llava.vqascore import QUESTION, vqascore, vqascore_pairs

    img = [str(Path(t5parts["images"]) / "img" / f"{i:03d}.png") for i in range(2)]
    captions = ["A red square.", "A green square with a longer description.", "a square"]
    s = vqascore(vlm, img, captions, batch_size=2)
    assert s.shape == (2, 3) and s.dtype == torch.float64 and bool(((s > 0) & (s <= 1)).all())
    again = vqascore_pairs(vlm, img, [captions] * 2, batch_size=3, share="none")
    for row, other in zip(s, again):
        torch.testing.assert_close(row, other, rtol=1e-5, atol=1e-7)

    # by hand: the encoder gets the question prompt with the image; T5 gets the labels "Yes" + </s>
    tok, m = vlm.tokenizer, vlm.model
    yes = [*pieces(tok, "Yes"), EOS]
    assert vlm.template.encode([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "Yes"}], True).labels == yes
    for i, image in enumerate(img):
        for j, text in enumerate(captions):
            prompt = vlm.prompt_ids(QUESTION.format(text))
            ids = torch.tensor([prompt])
            with torch.no_grad():
                embeds, mask, _, _ = m.prepare(ids, None, None, vlm._pixels([image]))
                assert embeds.shape[1] == len(prompt) - 1 + N_IMAGE
                loss = m.language_model(inputs_embeds=embeds, attention_mask=mask, labels=torch.tensor([yes])).loss  # mean over 2 tokens
                logp = torch.log_softmax(m(ids, pixel_values=vlm._pixels([image]), labels=torch.tensor([yes])).logits.double(), -1)[0]
            assert s[i, j].item() == pytest.approx(math.exp(-loss.item()), rel=1e-5)
            # = the geometric mean of P(label_t | image, question, earlier labels): sqrt(P("Yes") P(</s> | "Yes"))
            mean = sum(logp[t, y].item() for t, y in enumerate(yes)) / len(yes)
            assert s[i, j].item() == pytest.approx(math.exp(mean), rel=1e-5)


def test_hf_export_refuses_t5(t5_stage2, tmp_path):
    from sailflow.llava.export import ExportError, export_hf

    with pytest.raises(ExportError, match="t5"):
        export_hf(t5_stage2[0], tmp_path / "hf", log=_quiet())
    assert not (tmp_path / "hf").exists()
