"""LLaVA evaluation with a tiny trained stage: the answers JSONL (batched = one at a time, several
processes merged in question order) and VQAScore (teacher-forced "Yes" + EOS; one image encoding
shared by its texts gives the same scores as re-encoding per pair)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sailflow.llava.benchmarks import Item

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vlm(stage2):
    from sailflow.llava.generate import VisionLanguageModel

    return VisionLanguageModel.from_run(stage2, device="cpu")


def _items(parts, n=7):
    qs = ["What colour is the square?", "Is it a square?", "Name a colour."]
    items = [Item(question_id=1000 + i, image=parts["image_files"][i], question=qs[i % 3], category="c")
             for i in range(n)]
    items.append(Item(question_id="text-only", image=None, question="Name a colour."))
    return items


def test_answers_batched_and_sorted_equal_one_at_a_time_in_question_order(parts, vlm):
    from sailflow.llava.answer import answer_lines

    items = _items(parts)
    batched = answer_lines(vlm, items, "\nAnswer the question using a single word or phrase.", 6, batch_size=3, model_id="m")
    single = answer_lines(vlm, items, "\nAnswer the question using a single word or phrase.", 6, batch_size=1, model_id="m")
    assert batched == single
    assert [x["question_id"] for x in batched] == [it.question_id for it in items]
    assert batched[0]["prompt"] == "What colour is the square?\nAnswer the question using a single word or phrase."
    assert set(batched[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert batched[-1]["text"] == vlm.generate([None], [batched[-1]["prompt"]], max_new_tokens=6)[0]  # text-only: no image token


def test_greedy_answers_ignore_the_decoding_settings_an_llm_ships(parts, vlm):
    """LLaVA's protocol is greedy and nothing else: a repetition penalty or suppressed tokens in the LLM's
    own generation_config (Qwen2-Instruct ships a repetition_penalty) change no answer, streamed or not."""
    import io

    items = _items(parts)
    images, prompts = [it.image for it in items], [it.question for it in items]
    plain = vlm.generate(images, prompts, max_new_tokens=6)
    first_tokens = sorted({vlm.tokenizer(a, add_special_tokens=False).input_ids[0] for a in plain if a})
    assert first_tokens
    lm = vlm.model.language_model
    own = lm.generation_config
    shipped = own.__class__.from_dict({**own.to_dict(), "repetition_penalty": 50.0, "suppress_tokens": first_tokens,
                                       "no_repeat_ngram_size": 1})
    lm.generation_config = shipped
    try:
        assert vlm.generate(images, prompts, max_new_tokens=6) == plain
        assert lm.generation_config is shipped  # put back after each call
        for image, prompt, answer in zip(images[:3] + images[-1:], prompts[:3] + prompts[-1:], plain[:3] + plain[-1:]):
            assert vlm.chat(image, prompt, max_new_tokens=6, stream=True, file=io.StringIO()) == answer  # text-only too
    finally:
        lm.generation_config = own


def test_vqascore_refuses_a_stage_that_discards_the_question(stage1):
    from sailflow.llava.generate import VisionLanguageModel
    from sailflow.llava.vqascore import vqascore

    vlm1 = VisionLanguageModel.from_run(stage1, device="cpu")
    assert vlm1.template.name == "plain"
    with pytest.raises(ValueError, match="'plain' .* discards it"):
        vqascore(vlm1, [None], ["a red square", "a blue square"])


def test_answers_on_two_processes_merge_in_question_order(parts, stage2, tmp_path):
    from sailflow.llava.answer import answer_file, chunks
    from sailflow.llava.benchmarks import read_answers

    assert [list(c) for c in chunks(8, 3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]  # the reference's ceil(n/K) chunks
    items = _items(parts)
    settings = dict(suffix="", max_new_tokens=5, batch_size=4, model_id="tiny")
    answer_file(stage2, items, tmp_path / "one.jsonl", devices=["cpu"], **settings)
    answer_file(stage2, items, tmp_path / "two.jsonl", devices=["cpu", "cpu"], **settings)
    assert read_answers(tmp_path / "two.jsonl") == read_answers(tmp_path / "one.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]  # the parts are gone


def test_vqascore_is_exp_mean_log_prob_of_yes_and_eos(parts, vlm):
    from sailflow.llava.templates import IGNORE_INDEX
    from sailflow.llava.vqascore import QUESTION, vqascore

    image = parts["image_files"][0]
    texts = ["A red square.", "A blue square.", "a square"]
    s = vqascore(vlm, parts["image_files"][:2], texts, batch_size=2)
    assert s.shape == (2, 3) and s.dtype == torch.float64 and bool(((s > 0) & (s <= 1)).all())

    # by hand: the LLM's own causal-LM loss over the supervised tokens (" Yes" and </s>) of one conversation
    enc = vlm.template.encode([{"from": "human", "value": "<image>\n" + QUESTION.format(texts[1])}, {"from": "gpt", "value": "Yes"}], True)
    supervised = [t for t in enc.labels if t != IGNORE_INDEX]
    assert supervised[-1] == vlm.tokenizer.eos_token_id and len(supervised) >= 2
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        loss = vlm.model(ids, labels=torch.tensor([enc.labels]), pixel_values=vlm._pixels([image])).loss
    assert s[0, 1].item() == pytest.approx(math.exp(-loss.item()), rel=1e-4)


def test_vqascore_shared_prefix_and_features_equal_reencoding_per_pair(parts, vlm):
    from sailflow.evaluate.datasets import Pairs
    from sailflow.llava.vqascore import _prefix_length, vqascore, vqascore_pairs, winoground_matrix

    img = parts["image_files"][:3]
    texts = [["A red square.", "A green square with a much longer description.", "A blue square."], ["A yellow square."], ["Yes", "No"]]
    cached = vqascore_pairs(vlm, img, texts, batch_size=2)  # the default: the prefix's key/value cache
    features = vqascore_pairs(vlm, img, texts, batch_size=2, share="features")
    again = vqascore_pairs(vlm, img, texts, batch_size=3, share="none")
    for a, b, c in zip(cached, features, again):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-7)
    from sailflow.llava.vqascore import _encode_texts

    assert _prefix_length(_encode_texts(vlm, texts[0], "{}", "Yes")) is not None  # the cache really was used

    data = Pairs(images0=img[:2], images1=[img[2], img[0]], captions0=["A red square.", "x"], captions1=["A blue square.", "y"],
                 groups=["g", "g"])
    s = winoground_matrix(vlm, data)
    full = vqascore(vlm, [img[0]], ["A red square.", "A blue square."])
    torch.testing.assert_close(s[0, :, 0], full[0], rtol=1e-6, atol=1e-9)  # image 0 of example 0 vs its captions 0 and 1
    torch.testing.assert_close(s[1, 0, 1], vqascore(vlm, [img[0]], ["x"])[0, 0], rtol=1e-6, atol=1e-9)  # image 1 of example 1


def test_vqascore_tasks_winoground_and_text_to_image(parts, vlm, tmp_path):
    import json

    from sailflow.llava.vqascore import check_spec, evaluate, vqascore

    img = Path(parts["images"]) / "img"
    # text-to-image: a folder of images and a CSV of prompts -> one score per row, their mean
    (tmp_path / "prompts.csv").write_text('image,prompt\n000.png,A red square.\n001.png,"A green, bright square."\n')
    spec = {"kind": "vqascore", "images": str(img), "prompts": str(tmp_path / "prompts.csv")}
    check_spec(spec, "t2i", {})
    r = evaluate(vlm, spec, {})
    direct = [vqascore(vlm, [str(img / "000.png")], ["A red square."])[0, 0].item(),
              vqascore(vlm, [str(img / "001.png")], ["A green, bright square."])[0, 0].item()]
    assert [x["vqascore"] for x in r["scores"]] == pytest.approx(direct, rel=1e-9)
    assert r["metrics"]["vqascore"] == pytest.approx(sum(direct) / 2) and r["counts"] == {"pairs": 2}

    # a Winoground-style eval task: strict > on the 2x2 VQAScores, chance 1/4, 1/4, 1/6
    root = tmp_path / "wino"
    (root / "images").mkdir(parents=True)
    for k in range(2):
        for j in range(2):
            (root / "images" / f"ex{k}_{j}.png").write_bytes((img / f"{2 * k + j:03d}.png").read_bytes())
    lines = [{"id": k, "caption_0": "A red square.", "caption_1": "A green square.", "image_0": f"ex{k}_0", "image_1": f"ex{k}_1",
              "tag": "t", "collapsed_tag": "Object"} for k in range(2)]
    (root / "examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    eval_tasks = {"w": {"kind": "winoground", "root": str(root)}}
    r = evaluate(vlm, {"kind": "vqascore", "task": "w"}, eval_tasks)
    s = torch.tensor([e["scores"] for e in r["examples"]], dtype=torch.float64)
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    assert r["metrics"]["text"] == text.double().mean().item() and r["metrics"]["group"] == (text & image).double().mean().item()
    assert r["chance"] == {"text": 0.25, "image": 0.25, "group": 1 / 6}

    for bad, message in (({"kind": "vqascore", "task": "w", "images": "x"}, "either"), ({"kind": "vqascore", "task": "nope"}, "winoground"),
                         ({"kind": "vqascore", "images": "x"}, "both"), ({"kind": "vqascore", "task": "w", "qestion": "?"}, "unknown key"),
                         ({"kind": "vqascore", "task": "w", "question": "no slot"}, "{}")):
        with pytest.raises(ValueError, match=message):
            check_spec(bad, "t", eval_tasks)
    (tmp_path / "bad.csv").write_text("image,prompt\nmissing.png,x\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2: image 'missing.png'"):
        evaluate(vlm, {"kind": "vqascore", "images": str(img), "prompts": str(tmp_path / "bad.csv")}, {})
