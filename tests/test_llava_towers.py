"""LLaVA vision towers (CLIP / DINOv2 / SAIL / open_clip), `pad` preprocessing and the connectors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sailflow.align.heads import AlignmentHead
from sailflow.backbones.tiny import IMAGENET_MEAN, IMAGENET_STD, build_tiny
from sailflow.llava.connectors import ConnectorError, build_connector, connector_tokens
from sailflow.llava.towers import TowerError, expand2square, load_tower


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("towers")
    out = {
        "clip": build_tiny("clip", d / "clip336", image_size=336, patch_size=14),  # LLaVA-1.5's grid: 24 x 24
        "dinov2": build_tiny("dinov2", d / "dinov2_224", image_size=224, patch_size=14),  # resize 252, crop 224: 16 x 16
        "open_clip": build_tiny("open_clip", d / "open_clip"),
        "align": d / "align",
    }
    torch.manual_seed(0)
    AlignmentHead(vision_dim=2 * 64, text_dim=32, dim=48, head="star", width_factor=2).save(out["align"])
    return out


def spec(tiny, kind, **kw):
    family = {"clip": "clip", "open_clip": "open_clip", "dinov2": "dinov2", "sail": "dinov2"}[kind]
    path = f"local-dir:{tiny['open_clip']}" if family == "open_clip" else str(tiny[family])
    pooling = {"clip": "pooler", "open_clip": "projected", "dinov2": "concat"}[family]  # as configured for encoding
    s = {"kind": kind, "name": f"tiny_{kind}", "backbone": {"kind": "vision", "family": family, "path": path, "pooling": pooling}}
    if kind in ("clip", "open_clip"):
        s["layer"] = -2
    if kind == "sail":
        s["align_dir"] = str(tiny["align"])
    return {**s, **kw}


def pixels(seed, size, n=2):
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


# ---- towers --------------------------------------------------------------------------------------------
def test_clip_336_14_tower_gives_576_penultimate_patch_tokens(tiny):
    from transformers import CLIPVisionModel

    tower = load_tower(spec(tiny, "clip"))
    assert (tower.n_tokens, tower.hidden_size, tower.image_size) == (576, 32, (336, 336))
    x = pixels(0, (336, 336))
    with torch.no_grad():
        hidden = CLIPVisionModel.from_pretrained(str(tiny["clip"])).eval()(pixel_values=x, output_hidden_states=True).hidden_states
    out = tower(x)
    assert out.shape == (2, 576, 32)
    torch.testing.assert_close(out, hidden[-2][:, 1:])  # layer -2, CLS dropped, no post-LN
    assert not torch.allclose(out, hidden[-1][:, 1:])


def test_dinov2_224_14_tower_gives_256_final_normed_patch_tokens(tiny):
    from transformers import AutoModel

    s = spec(tiny, "dinov2")
    s["backbone"]["layer"] = 1  # a block chosen for encoding does not carry over to the tower
    tower = load_tower(s)
    assert (tower.n_tokens, tower.hidden_size, tower.image_size) == (256, 64, (224, 224))
    x = pixels(1, (224, 224))
    with torch.no_grad():
        last = AutoModel.from_pretrained(str(tiny["dinov2"])).eval()(pixel_values=x).last_hidden_state
    torch.testing.assert_close(tower(x), last[:, 1:])


def test_sail_tower_is_the_align_heads_vision_half_on_cls_patch_tokens(tiny):
    from transformers import AutoModel

    tower = load_tower(spec(tiny, "sail"))
    assert (tower.n_tokens, tower.hidden_size, tower.image_size) == (256, 48, (224, 224))  # head dim, not DINOv2's
    x = pixels(2, (224, 224))
    head = AlignmentHead.load(tiny["align"])
    with torch.no_grad():
        h = AutoModel.from_pretrained(str(tiny["dinov2"])).eval()(pixel_values=x).last_hidden_state
        feats = torch.cat([h[:, :1].expand(-1, 256, -1), h[:, 1:]], dim=-1)  # [CLS ; patch_i]: [2, 256, 128]
        expected = head.vision_mapping_network(head.vision_layer_norm(feats))  # per token, no L2 norm
    out = tower(x)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(2, 256))
    assert set(tower.head.state_dict()) == {k for k in head.state_dict() if k.startswith("vision_")}  # text half dropped


def test_pool_averages_the_token_grid(tiny):
    from sailflow.llava.export import exportable

    full, pooled = load_tower(spec(tiny, "sail")), load_tower(spec(tiny, "sail", pool=2))
    assert (pooled.n_tokens, pooled.hidden_size) == (4, 48) and pooled.describe()["pool"] == 2
    x = pixels(3, (224, 224))
    grid = full(x).double().reshape(2, 16, 16, 48)  # row-major patches
    quarters = [grid[:, r:r + 8, c:c + 8].mean((1, 2)) for r in (0, 8) for c in (0, 8)]
    torch.testing.assert_close(pooled(x).double(), torch.stack(quarters, 1), rtol=1e-5, atol=1e-6)
    three = load_tower(spec(tiny, "dinov2", pool=3))  # 16 / 3: overlapping cells 0-6, 5-11, 10-16 per side
    grid = load_tower(spec(tiny, "dinov2"))(x).double().reshape(2, 16, 16, 64)
    out = three(x).double()
    assert out.shape == (2, 9, 64)
    torch.testing.assert_close(out[:, 0], grid[:, :6, :6].mean((1, 2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, 4], grid[:, 5:11, 5:11].mean((1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(TowerError, match="pool 17 needs a square grid of at least 17 x 17 tokens; this tower gives 256"):
        load_tower(spec(tiny, "dinov2", pool=17))
    assert exportable("clip", "mlp2x_gelu", tower_layer=-2) and not exportable("clip", "mlp2x_gelu", tower_layer=-2, pool=2)


def test_sail_tower_refuses_a_head_of_another_width(tiny, tmp_path):
    AlignmentHead(vision_dim=64, text_dim=32, dim=48).save(tmp_path / "align")  # trained on cls pooling: 64-d
    with pytest.raises(TowerError, match="takes 64-d vision features but .* is 128-d"):
        load_tower(spec(tiny, "sail", align_dir=str(tmp_path / "align")))
    with pytest.raises(TowerError, match="no alignment head"):
        load_tower(spec(tiny, "sail", align_dir=str(tmp_path / "missing")))
    with pytest.raises(TowerError, match="needs a dinov2 backbone"):
        load_tower({**spec(tiny, "sail"), "backbone": spec(tiny, "clip")["backbone"]})


def test_open_clip_tower_tokens_and_its_own_mean(tiny):
    import open_clip

    tower = load_tower(spec(tiny, "open_clip"), image_aspect_ratio="pad")
    assert (tower.n_tokens, tower.hidden_size, tower.image_size) == (64, 32, (64, 64))
    assert tower.background == tuple(int(255 * m) for m in open_clip.OPENAI_DATASET_MEAN) == (122, 116, 104)
    assert tower.preprocess(Image.new("RGB", (90, 30), (255, 0, 0))).shape == (3, 64, 64)


def test_connector_token_counts_per_tower(tiny):
    clip, dino = load_tower(spec(tiny, "clip")), load_tower(spec(tiny, "dinov2"))
    assert connector_tokens("mlp2x_gelu", clip.n_tokens) == 576
    assert connector_tokens("linear", dino.n_tokens) == 256
    assert connector_tokens("resampler", clip.n_tokens) == 64
    resampler = build_connector("resampler", clip.hidden_size, 40, clip.n_tokens, n_queries=16, heads=4)
    assert resampler(clip(pixels(3, clip.image_size))).shape == (2, connector_tokens("resampler", 576, n_queries=16), 40) == (2, 16, 40)


# ---- pad -----------------------------------------------------------------------------------------------
def test_expand2square_centres_the_image_on_the_background():
    img = Image.new("RGB", (41, 20), (200, 10, 10))
    img.putpixel((0, 0), (0, 255, 0))
    sq = expand2square(img, (1, 2, 3))
    assert sq.size == (41, 41)
    top = (41 - 20) // 2  # 10 rows above, 11 below, as LLaVA
    assert sq.getpixel((0, top)) == (0, 255, 0)
    assert sq.getpixel((20, top - 1)) == (1, 2, 3) and sq.getpixel((20, top + 20)) == (1, 2, 3)
    assert sq.getpixel((40, top + 19)) == (200, 10, 10)
    assert [sq.getpixel((5, y)) for y in (0, 40)] == [(1, 2, 3)] * 2
    tall = expand2square(Image.new("RGB", (10, 30), (9, 9, 9)), (1, 2, 3))
    assert tall.size == (30, 30) and tall.getpixel((9, 5)) == (1, 2, 3) and tall.getpixel((10, 5)) == (9, 9, 9)
    assert tall.getpixel((20, 5)) == (1, 2, 3)
    same = Image.new("RGB", (8, 8))
    assert expand2square(same, (1, 2, 3)) is same


def test_pad_puts_a_wide_image_on_the_processor_mean_and_keeps_the_tower_size(tiny):
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    square, pad = (load_tower(spec(tiny, "dinov2"), image_aspect_ratio=a) for a in ("square", "pad"))
    assert pad.background == tuple(int(255 * m) for m in IMAGENET_MEAN) == (123, 116, 103)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    xs, xp = square.preprocess(wide), pad.preprocess(wide)
    assert xs.shape == xp.shape == (3, 224, 224)
    torch.testing.assert_close(xs[:, 112, 112], red, atol=1e-3, rtol=0)  # square: the crop is all red
    torch.testing.assert_close(xs[:, 5, 5], red, atol=1e-3, rtol=0)
    # pad: 200 x 200 (red rows 50..149) -> resize 252 (rows 63..189) -> crop 224 (rows 49..175)
    assert xp[:, :40].abs().max() < 0.03  # the mean colour normalises to ~0 (truncated to integers)
    assert xp[:, 190:].abs().max() < 0.03
    torch.testing.assert_close(xp[:, 112, 112], red, atol=1e-3, rtol=0)
    torch.testing.assert_close(xp[:, 60:165, 5], red[:, None].expand(3, 105), atol=1e-3, rtol=0)
    clip = load_tower(spec(tiny, "clip"), image_aspect_ratio="pad")
    assert clip.background == (122, 116, 104)  # LLaVA-1.5's CLIP background
    assert clip.preprocess(Image.new("L", (50, 300), 128)).shape == (3, 336, 336)


# ---- trainability --------------------------------------------------------------------------------------
def test_towers_are_frozen_until_unlocked(tiny):
    tower = load_tower(spec(tiny, "sail"))
    x = pixels(4, (224, 224), n=1)
    assert not tower(x).requires_grad and not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.backbone.training and not tower.head.training  # frozen parts stay in eval mode

    tower.set_trainable(tower=False, head=True)  # SAIL-LLaVA's tune_alignment_layer
    tower(x).sum().backward()
    assert all(p.grad is not None for p in tower.head.parameters())
    assert all(p.grad is None for p in tower.backbone.parameters())

    tower.set_trainable(tower=True, head=True)  # + unlock_vision_tower
    tower(x).sum().backward()
    assert all(p.grad is not None for p in tower.backbone.model.encoder.parameters())
    assert tower.backbone.training and tower.head.training

    json.dumps(tower.describe())
    d = tower.describe()
    assert d["n_tokens"] == 256 and d["hidden_size"] == 48 and d["pooling"] == "tokens_cls" and d["trainable"] == {"tower": True, "head": True}
    with pytest.raises(TowerError, match="no alignment head"):
        load_tower(spec(tiny, "dinov2")).set_trainable(tower=True, head=True)


def test_bad_tower_specs_say_what_to_choose(tiny):
    with pytest.raises(TowerError, match="unknown kind 'siglip'"):
        load_tower({**spec(tiny, "clip"), "kind": "siglip"})
    with pytest.raises(TowerError, match="image_aspect_ratio 'anyres'"):
        load_tower(spec(tiny, "clip"), image_aspect_ratio="anyres")


# ---- connectors ----------------------------------------------------------------------------------------
def test_mlp2x_gelu_is_llavas_projector():
    proj = build_connector("mlp2x_gelu", 24, 40, n_tokens=9)
    assert {k: tuple(v.shape) for k, v in proj.state_dict().items()} == {
        "0.weight": (40, 24), "0.bias": (40,), "2.weight": (40, 40), "2.bias": (40,)}
    x = torch.randn(2, 9, 24)
    sd = proj.state_dict()
    expected = F.linear(F.gelu(F.linear(x, sd["0.weight"], sd["0.bias"])), sd["2.weight"], sd["2.bias"])  # exact erf GELU
    torch.testing.assert_close(proj(x), expected)
    lin = build_connector("linear", 24, 40, n_tokens=9)
    assert {k: tuple(v.shape) for k, v in lin.state_dict().items()} == {"weight": (40, 24), "bias": (40,)}
    assert [k for k in build_connector("mlp3x_gelu", 24, 40, 9).state_dict() if k.endswith("weight")] == ["0.weight", "2.weight", "4.weight"]


def test_resampler_compresses_to_its_queries_and_reads_the_image_tokens():
    torch.manual_seed(0)
    res = build_connector("resampler", 32, 40, n_tokens=576, n_queries=8, heads=4, layers=2).eval()
    x = torch.randn(3, 576, 32)
    out = res(x)
    assert out.shape == (3, 8, 40) and connector_tokens("resampler", 576, n_queries=8) == 8
    assert build_connector("resampler", 32, 40, n_tokens=576)(x).shape == (3, 64, 40)  # defaults: 64 queries
    assert not torch.allclose(out[0], out[1])  # different images, different tokens
    x2 = x.clone()
    x2[0, 100] = torch.randn(32)  # one image token changed: every query of that image sees it, the others not
    out2 = res(x2)
    assert (out2[0] - out[0]).abs().amax(dim=-1).min() > 1e-6
    torch.testing.assert_close(out2[1:], out[1:])
    x.requires_grad_(True)
    res(x).sum().backward()
    assert x.grad.abs().sum() > 0 and res.queries.grad.abs().sum() > 0


def test_resampler_positions_come_only_from_its_queries():
    """No position is added to the image tokens (a ViT's tokens already carry theirs): shuffling them leaves the
    output unchanged, while swapping two learned queries swaps exactly those two output tokens."""
    torch.manual_seed(0)
    res = build_connector("resampler", 32, 40, n_tokens=49, n_queries=6, heads=4, layers=2).eval().double()
    x = torch.randn(2, 49, 32, dtype=torch.float64)
    out = res(x)
    torch.testing.assert_close(res(x[:, torch.randperm(49)]), out)
    with torch.no_grad():
        res.queries[[1, 4]] = res.queries[[4, 1]].clone()
    swapped = res(x)
    torch.testing.assert_close(swapped[:, [4, 1]], out[:, [1, 4]])
    torch.testing.assert_close(swapped[:, [0, 2, 3, 5]], out[:, [0, 2, 3, 5]])


def test_connector_errors_name_the_choices():
    with pytest.raises(ConnectorError, match="unknown connector 'qformer'"):
        build_connector("qformer", 8, 8, 4)
    with pytest.raises(ConnectorError, match="takes no option"):
        build_connector("mlp2x_gelu", 8, 8, 4, n_queries=4)
    with pytest.raises(ConnectorError, match="not divisible by heads=8"):
        build_connector("resampler", 12, 8, 4)
