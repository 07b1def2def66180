"""REMGCL's multi-granularity loss: patch grid and box mapping, OCR records, stop words, both terms
checked against numbers computed here by hand, the empty cases (0, never NaN) and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sailflow.llava.data import RecordError
from sailflow.llava.remgcl import (
    DEFAULT_STOP_WORDS,
    OcrRegion,
    RegionTokens,
    RemgclError,
    RemgclLoss,
    RemgclSettings,
    answer_mask,
    box_to_tokens,
    global_loss,
    local_loss,
    pad_box,
    parse_ocr,
    patch_grid,
    prepare_regions,
    stop_word_ids,
)

IGN = -100


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ---- grid and boxes ---------------------------------------------------------------------------------


def test_patch_grid_follows_the_tower():
    assert patch_grid(224, 14) == (16, 16)
    assert patch_grid(336, 14) == (24, 24)
    assert patch_grid((28, 42), 14) == (2, 3)
    assert patch_grid(336, 14, n_tokens=576) == (24, 24)
    with pytest.raises(RemgclError, match="resampler"):
        patch_grid(336, 14, n_tokens=64)
    with pytest.raises(RemgclError, match="whole number"):
        patch_grid(225, 14)
    for bad in (0, -14, 14.0, True, (14,)):
        with pytest.raises(RemgclError, match="patch_size"):
            patch_grid(224, bad)


@pytest.mark.parametrize("size,side", [(224, 16), (336, 24)])
def test_box_to_tokens_corners_and_whole_image(size, side):
    grid = patch_grid(size, 14)
    assert box_to_tokens([0, 0, 14, 14], grid, size) == [0]
    assert box_to_tokens([size - 14, size - 14, size, size], grid, size) == [side * side - 1]
    assert box_to_tokens([size - 14, 0, size, 14], grid, size) == [side - 1]  # top-right
    assert box_to_tokens([0, 0, size, size], grid, size) == list(range(side * side))
    assert box_to_tokens([0.0, 0.0, 1.0, 1.0], grid, size) == []  # 1 px^2 of a 196 px^2 cell: < 5%


@pytest.mark.parametrize("size,side", [(224, 16), (336, 24)])
def test_box_straddling_two_cells_at_five_percent_of_the_cell(size, side):
    grid = patch_grid(size, 14)
    # 5% of a 14x14 cell is 9.8 px^2; a 14-px-tall box reaching 0.7 px into the next column covers exactly that
    assert box_to_tokens([0, 0, 14.69, 14], grid, size) == [0]  # 0.69 * 14 = 9.66 px^2 < 9.8
    assert box_to_tokens([0, 0, 14.71, 14], grid, size) == [0, 1]  # 9.94 px^2 >= 9.8
    assert box_to_tokens([0, 0, 14.7, 14], grid, size) == [0, 1]  # exactly 5% counts (>=)
    assert box_to_tokens([0, 0, 14, 14.71], grid, size) == [0, side]  # into the next row
    assert box_to_tokens([0, 0, 14, 14.69], grid, size) == [0]
    # a box inside four cells: x 100..112.5 covers 12 px of col 7 (98..112), 0.5 px of col 8;
    # y 50..60 covers 6 px of row 3 (42..56), 4 px of row 4: areas 72, 48 (>= 9.8), 3, 2 (< 9.8)
    assert box_to_tokens([100, 50, 112.5, 60], grid, size) == [3 * side + 7, 4 * side + 7]
    # a lower threshold admits the small overlaps: 3 px^2 = 1.53% of the cell, 2 px^2 = 1.02%
    assert box_to_tokens([100, 50, 112.5, 60], grid, size, min_overlap=0.01) == [3 * side + 7, 3 * side + 8,
                                                                                 4 * side + 7, 4 * side + 8]


def test_box_to_tokens_on_a_non_square_image_and_other_resolutions():
    # 42 px wide, 28 px tall, 2 x 3 cells of 14 px; the grid scales with the image: the padded square
    # of a 1000 px image has cells of 1000 / 24 px
    assert box_to_tokens([14, 14, 42, 28], (2, 3), (28, 42)) == [4, 5]
    assert box_to_tokens([0, 0, 1000 / 24, 1000 / 24], (24, 24), 1000) == [0]


@pytest.mark.parametrize("box,match", [
    ([10, 10, 10, 20], "empty"), ([10, 20, 30, 5], "empty"), ([-1, 0, 10, 10], "outside"),
    ([0, 0, 225, 10], "outside"), ([0, 0, 10, 224.5], "outside"), ([0, 0, 10], "four finite"),
    ([0, 0, float("nan"), 10], "four finite"), ([0, 0, True, 10], "four finite"), ("0 0 1 1", "four finite"),
])
def test_bad_boxes_are_clear_errors(box, match):
    with pytest.raises(RemgclError, match=match):
        box_to_tokens(box, (16, 16), 224)


def test_min_overlap_must_be_a_fraction():
    for bad in (0, -0.1, 1.5, "5%"):
        with pytest.raises(RemgclError, match="min_overlap"):
            box_to_tokens([0, 0, 14, 14], (16, 16), 224, min_overlap=bad)


def test_pad_box_moves_boxes_onto_the_padded_square():
    assert pad_box([10, 5, 20, 15], 100, 50) == ([10.0, 30.0, 20.0, 40.0], 100)  # (100 - 50) // 2 = 25 down
    assert pad_box([0, 0, 10, 10], 51, 100) == ([24.0, 0.0, 34.0, 10.0], 100)  # (100 - 51) // 2 = 24 right
    with pytest.raises(RemgclError, match="outside"):
        pad_box([0, 0, 10, 60], 100, 50)


# ---- OCR records ------------------------------------------------------------------------------------------


def test_parse_ocr_reads_boxes_and_quadrilaterals():
    rec = {"id": "r1", "image": "a.jpg", "ocr": [
        {"text": "STOP", "box": [1, 2, 30, 12.5], "conf": 0.98},
        {"text": "Main St", "box": [[5, 40], [60, 38], [61, 50], [4, 52]]},  # PaddleOCR: the hull
    ]}
    assert parse_ocr(rec, "data.json") == [OcrRegion("STOP", (1.0, 2.0, 30.0, 12.5)),
                                           OcrRegion("Main St", (4.0, 38.0, 61.0, 52.0))]
    assert parse_ocr({"id": "r2", "image": "a.jpg"}, "data.json") == []
    assert parse_ocr({"id": "r3", "image": "a.jpg", "ocr": None}, "data.json") == []
    assert parse_ocr({"id": "r4", "ocr": []}, "data.json") == []


@pytest.mark.parametrize("ocr,match", [
    ("STOP", "not a list"), (["STOP"], r"ocr\[0\] is a str"), ([{"box": [0, 0, 1, 1]}], r"ocr\[0\] has no non-empty"),
    ([{"text": "  ", "box": [0, 0, 1, 1]}], "non-empty"), ([{"text": "a", "box": [0, 0, 1]}], "four finite"),
    ([{"text": "a", "box": [0, 0, 1, 1]}, {"text": "b"}], r"ocr\[1\] 'box' is None"),
    ([{"text": "a", "box": [0, 0, "1", 1]}], "four finite"), ([{"text": "a", "box": [0, 0, float("inf"), 1]}], "four finite"),
    ([{"text": "a", "box": [5, 0, 5, 1]}], "empty"), ([{"text": "a", "box": [-2, 0, 5, 1]}], "negative"),
])
def test_malformed_ocr_names_the_file_and_record(ocr, match):
    with pytest.raises(RecordError, match=match) as e:
        parse_ocr({"id": "r7", "image": "a.jpg", "ocr": ocr}, "train.json")
    assert str(e.value).startswith("train.json: record r7: ") and e.value.reason == "bad_ocr"


def test_ocr_without_an_image_is_an_error():
    with pytest.raises(RecordError, match="record t1: has OCR regions but no image"):
        parse_ocr({"id": "t1", "ocr": [{"text": "a", "box": [0, 0, 1, 1]}]}, "train.json")


# ---- stop words -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from sailflow.llava.tiny import train_tokenizer

    sentences = ["the image shows a red sign with the word stop", "a sign with the text main street",
                 "the image suggests a shop front", "this image shows the word open on a door",
                 "the red sign says stop\nthe door says open"] * 5
    return train_tokenizer(sentences, tmp_path_factory.mktemp("remgcl") / "tok", vocab_size=400)


def test_stop_word_ids_cover_both_spellings_and_special_tokens(tokenizer):
    ids = stop_word_ids(tokenizer, ["the", "image", "\n"])
    for w in ("the", "image", "\n"):
        assert tuple(tokenizer(w, add_special_tokens=False).input_ids) in ids
        assert tuple(tokenizer(" " + w, add_special_tokens=False).input_ids) in ids
    assert (tokenizer.eos_token_id,) in ids and (tokenizer.pad_token_id,) in ids
    assert (tokenizer.eos_token_id,) not in stop_word_ids(tokenizer, ["the"], special=False)
    assert ids == tuple(sorted(set(ids)))
    with pytest.raises(RemgclError, match="non-empty"):
        stop_word_ids(tokenizer, ["the", ""])


def test_stop_words_are_removed_from_a_real_answer(tokenizer):
    words = ["the", "image", "shows", "a", "red", "sign", "with", "the", "word", "stop"]
    per_word = [tokenizer(" " + w, add_special_tokens=False).input_ids for w in words]
    answer = [i for ids in per_word for i in ids]
    assert answer == tokenizer(" " + " ".join(words), add_special_tokens=False).input_ids  # words tokenise apart
    stop = {"the", "image", "a", "with"}
    expected = [False, False] + [w not in stop for w, ids in zip(words, per_word) for _ in ids] + [False]
    labels = torch.tensor([[IGN, IGN] + answer + [tokenizer.eos_token_id]])
    mask = answer_mask(labels, stop_word_ids(tokenizer, sorted(stop)))
    assert mask[0].tolist() == expected
    assert any(expected)  # "shows", "red", "sign", "word", "stop" remain


def test_default_stop_words_with_a_real_tokenizer(tokenizer):
    ids = stop_word_ids(tokenizer, RemgclSettings().stop_words)
    answer = tokenizer(" the image suggests a shop\nthe", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    kept = [t for t, m in zip(answer, answer_mask(torch.tensor([answer]), ids)[0].tolist()) if m]
    assert tokenizer.decode(kept).strip() == "shop"


class _SentencePieceLike:
    """Mimics a Llama tokenizer: a lone "\u2581" (id 5) in front of "\\n" (13) and " The"."""

    unk_token_id = 0
    all_special_ids = [0, 1, 2]
    table = {"\n": [5, 13], " \n": [5, 5, 13], "The": [450], " The": [5, 450], "zz": [0, 7], " zz": [5, 0, 7]}

    def __call__(self, text, add_special_tokens=True):
        return type("Enc", (), {"input_ids": list(self.table[text])})

    def decode(self, ids):
        return {5: " ", 13: "\n", 450: "The", 7: "z", 0: "<unk>"}[ids[0]]


def test_stop_word_ids_drop_a_leading_lone_space_token_and_unknowns():
    ids = stop_word_ids(_SentencePieceLike(), ["\n", "The", "zz"])
    assert set(ids) == {(5, 13), (13,), (5, 5, 13), (450,), (5, 450), (0,), (1,), (2,)}
    assert (5,) not in ids  # never the lone space by itself
    assert (0, 7) not in ids and (7,) not in ids


def test_answer_mask_matches_stop_sequences_whole():
    labels = torch.tensor([[IGN, 8, 9, 8, 14, 7, 9, IGN], [8, 9, 8, 9, 9, IGN, IGN, IGN]])
    mask = answer_mask(labels, [(7,), (8, 9)])
    assert mask.tolist() == [[False, False, False, True, True, False, True, False],
                             [False, False, False, False, True, False, False, False]]
    assert answer_mask(labels, []).tolist() == (labels != IGN).tolist()


# ---- the terms ------------------------------------------------------------------------------------------


def _global_batch():
    """Three samples, d = 3, T = 6, N = 4 image tokens; stop ids: 7, and the pair (8, 9)."""
    labels = torch.tensor([[IGN, IGN, 11, 7, 12, IGN],
                           [8, 9, 8, 14, IGN, IGN],
                           [7, 7, IGN, IGN, IGN, IGN]])
    embeds = torch.tensor([[[9, 9, 9], [9, -9, 9], [1, 2, 2], [50, -50, 3], [3, 0, 4], [0, 0, 0]],
                           [[7, 7, 7], [-7, 7, -7], [1, 0, 0], [0, 0, 2], [0, 0, 0], [0, 0, 0]],
                           [[1, 1, 1], [2, 2, 2], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=torch.float)
    visual = torch.tensor([[[1, 0, 0], [0, 1, 0], [1, 1, 2], [2, 2, 2]],
                           [[2, 0, 1], [0, 0, 1], [1, 3, 1], [1, -3, 1]],
                           [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]], dtype=torch.float)
    return embeds, labels, visual, ((7,), (8, 9))


def test_global_term_by_hand():
    embeds, labels, visual, stop = _global_batch()
    # sample 0: answer tokens 11, 12 (7 is a stop word): mean([1,2,2], [3,0,4]) = [2,1,3]; visual mean [1,1,1]
    c0 = cos([2, 1, 3], [1, 1, 1])
    # sample 1: (8, 9) removed, the lone 8 and 14 stay: mean([1,0,0], [0,0,2]) = [0.5,0,1]; visual mean [1,0,1]
    c1 = cos([0.5, 0, 1], [1, 0, 1])
    # sample 2: every answer token is a stop word: skipped, not in the mean
    out = global_loss(embeds, labels, visual, stop, temperature=0.5)
    assert (out.used, out.skipped) == (2, 1)
    assert out.loss.item() == pytest.approx(-(c0 / 0.5 + c1 / 0.5) / 2, abs=1e-6)
    assert out.loss.item() == pytest.approx(-(6 / math.sqrt(42) + 1.5 / math.sqrt(2.5)), abs=1e-6)
    # a text-only sample (no image) is left out, and not counted as skipped
    out = global_loss(embeds, labels, visual, stop, temperature=0.25, has_image=torch.tensor([True, False, False]))
    assert (out.used, out.skipped) == (1, 0)
    assert out.loss.item() == pytest.approx(-c0 / 0.25, abs=1e-6)


def test_global_term_is_zero_not_nan_without_content_tokens():
    embeds, labels, visual, stop = _global_batch()
    no_labels = torch.full_like(labels, IGN)
    for lab in (no_labels, torch.where(labels == IGN, IGN, 7)):
        out = global_loss(embeds, lab, visual, stop)
        assert out.loss.item() == 0.0 and out.used == 0 and not torch.isnan(out.loss)
        assert out.skipped == 3  # each sample has an image but no content token: skipped and counted


def test_global_term_ignores_non_finite_values_outside_the_answer():
    embeds, labels, visual, stop = _global_batch()
    embeds[0, 0] = float("inf")  # an unsupervised position
    embeds[0, 3] = float("nan")  # a stop word
    assert torch.isfinite(global_loss(embeds, labels, visual, stop).loss)


def _local_batch():
    """Two samples on a 2 x 2 grid (28 px image, 14 px patches), d = 3, a 6-token vocabulary."""
    visual = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]],
                           [[2, 0, 0], [0, 2, 0], [0, 0, 2], [1, 2, 3]]], dtype=torch.float)
    emb = torch.nn.Embedding(6, 3)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [2, -1, 0], [5, 5, 5]], dtype=torch.float))
    regions = [[RegionTokens((0, 1), (0, 1)), RegionTokens((3,), ())],  # the second covers no cell
               [RegionTokens((4, 2), (3,)), RegionTokens((2,), (0, 2))]]
    return visual, emb, regions


def test_local_term_by_hand():
    visual, emb, regions = _local_batch()
    c_a = cos([0.5, 0.5, 0], [0.5, 0.5, 0])  # text mean(e0, e1); cells 0, 1 of sample 0
    c_c = cos([1, -0.5, 0.5], [1, 2, 3])  # text mean(e4, e2); cell 3 of sample 1
    c_d = cos([0, 0, 1], [1, 0, 1])  # text e2; mean of cells 0, 2 of sample 1
    out = local_loss(visual, emb, regions, temperature=0.5)
    assert (out.used, out.skipped) == (3, 1)
    assert out.loss.item() == pytest.approx(-(c_a + c_c + c_d) / 3 / 0.5, abs=1e-6)
    assert out.loss.item() == pytest.approx(-(1 + 1.5 / math.sqrt(21) + 1 / math.sqrt(2)) / 1.5, abs=1e-6)


def test_local_term_is_zero_not_nan_without_regions():
    visual, emb, _ = _local_batch()
    for regions in (None, [[], []], [[RegionTokens((1,), ())], []], [[RegionTokens((), (0,))], []]):
        out = local_loss(visual, emb, regions)
        assert out.loss.item() == 0.0 and not torch.isnan(out.loss) and out.used == 0
    assert local_loss(visual, emb, [[RegionTokens((1,), ())], [RegionTokens((), (0,))]]).skipped == 2
    # a sample without regions is simply absent from the mean
    only = local_loss(visual, emb, [[RegionTokens((0, 1), (0, 1))], []])
    assert only.used == 1 and only.loss.item() == pytest.approx(-1 / 0.5, abs=1e-6)


def test_local_term_checks_the_regions_against_the_batch():
    visual, emb, regions = _local_batch()
    with pytest.raises(RemgclError, match="one list per sample"):
        local_loss(visual, emb, regions[:1])
    with pytest.raises(RemgclError, match="another grid"):
        local_loss(visual, emb, [[RegionTokens((0,), (4,))], []])


def test_prepare_regions_tokenises_text_and_maps_boxes(tokenizer):
    regions = [OcrRegion("stop", (0.0, 0.0, 14.0, 14.0)), OcrRegion("main street", (14.0, 14.0, 15.0, 15.0))]
    out = prepare_regions(regions, tokenizer, (2, 2), 28)
    assert out[0] == RegionTokens(tuple(tokenizer("stop", add_special_tokens=False).input_ids), (0,))
    assert out[1].patches == () and tokenizer.bos_token_id not in out[1].text_ids  # 1 px^2: no cell
    with pytest.raises(RemgclError, match=r"train.json record r9: ocr\[0\]: box .* outside"):
        prepare_regions([OcrRegion("x", (0.0, 0.0, 30.0, 10.0))], tokenizer, (2, 2), 28, where="train.json record r9")


# ---- the whole loss ----------------------------------------------------------------------------------------


def test_settings_defaults_and_validation():
    s = RemgclSettings()
    assert (s.lambda_global, s.lambda_local, s.temperature_global, s.temperature_local, s.min_overlap) == (0.01, 0.01, 0.5, 0.5, 0.05)
    assert s.stop_words == DEFAULT_STOP_WORDS and {"The", "image", "This", "suggests", "\n", "."} <= set(s.stop_words)
    assert RemgclSettings.from_config({"lambda_local": 0, "stop_words": ["a"]}).stop_words == ("a",)
    assert RemgclSettings.from_config(s.to_dict()) == s
    with pytest.raises(RemgclError, match="unknown setting"):
        RemgclSettings.from_config({"lambda": 1})
    for bad in ({"temperature_local": 0}, {"lambda_global": -1}, {"min_overlap": 5}, {"stop_words": "the"},
                {"stop_words": ["a", ""]}):
        with pytest.raises(RemgclError):
            RemgclSettings.from_config(bad)


def test_total_loss_combines_the_terms_by_hand():
    embeds, labels, visual, stop = _global_batch()
    _, emb, regions = _local_batch()
    regions = [regions[0], regions[1], []]
    g = -(cos([2, 1, 3], [1, 1, 1]) + cos([0.5, 0, 1], [1, 0, 1])) / 2 / 0.5
    # the local term on the same visual tokens: cells 0, 1 of sample 0; cell 3, then cells 0, 2 of sample 1
    l_ = -(cos([0.5, 0.5, 0], [0.5, 0.5, 0]) + cos([1, -0.5, 0.5], [1, -3, 1])
           + cos([0, 0, 1], [(2 + 1) / 2, (0 + 3) / 2, (1 + 1) / 2])) / 3 / 0.5
    loss = RemgclLoss(RemgclSettings(lambda_global=0.1, lambda_local=0.2), stop)
    out = loss(torch.tensor(2.0), inputs_embeds=embeds, labels=labels, image_features=visual, embed_tokens=emb,
               regions=regions)
    assert out.loss.item() == pytest.approx(2.0 + 0.1 * g + 0.2 * l_, abs=1e-6)
    log = out.log()
    assert log["global_samples"] == 2 and log["global_skipped"] == 1 and log["local_regions"] == 3 and log["local_skipped"] == 1
    off = RemgclLoss(RemgclSettings(lambda_global=0, lambda_local=0), stop)(
        torch.tensor(2.0), inputs_embeds=embeds, labels=labels, image_features=visual, embed_tokens=emb, regions=regions)
    assert off.loss.item() == 2.0 and off.global_term.used == 0


def test_gradients_reach_the_visual_tokens_and_the_embeddings(tokenizer):
    torch.manual_seed(0)
    V, d, N = len(tokenizer), 8, 4
    emb = torch.nn.Embedding(V, d)
    visual = torch.randn(2, N, d, requires_grad=True)
    stop = stop_word_ids(tokenizer, ["the"])
    (the,) = tokenizer(" the", add_special_tokens=False).input_ids
    sign = tokenizer(" sign", add_special_tokens=False).input_ids
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    ids = torch.tensor([[bos, the] + sign, [bos, the, the] + [pad] * (len(sign) - 1)])
    labels = ids.clone()
    labels[:, 0] = IGN
    labels[1, 3:] = IGN
    regions = [[RegionTokens(tuple(tokenizer("stop", add_special_tokens=False).input_ids), (0, 1))], []]
    lm = torch.tensor(1.0)  # a stand-in LM loss
    loss = RemgclLoss.from_tokenizer(RemgclSettings(stop_words=("the",)), tokenizer)
    out = loss(lm, inputs_embeds=emb(ids), labels=labels, image_features=visual, embed_tokens=emb, regions=regions)
    assert out.global_term.used == 1 and out.global_term.skipped == 1 and out.local_term.used == 1
    out.loss.backward()
    assert visual.grad is not None and visual.grad[0].abs().sum() > 0  # sample 0: both terms
    assert visual.grad[1].abs().sum() == 0  # sample 1: all "the", no regions: no signal
    g = emb.weight.grad
    for t in sign + list(regions[0][0].text_ids):
        assert g[t].abs().sum() > 0
    assert g[the].abs().sum() == 0 and g[tokenizer.bos_token_id].abs().sum() == 0
    assert stop == loss.stop_ids


def test_bf16_inputs_give_a_float32_loss():
    embeds, labels, visual, stop = _global_batch()
    out = global_loss(embeds.bfloat16(), labels, visual.bfloat16(), stop)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
