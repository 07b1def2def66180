"""Token features of a chosen block (LLaVA's vision towers): CLIP and open_clip, beside DINOv2."""

from __future__ import annotations

import pytest
import torch

from sailflow.backbones import BackboneError, load_vision
from sailflow.backbones.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {k: build_tiny(k, d / k) for k in ("clip", "open_clip", "dinov2")}


X = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)


def test_clip_tokens_are_the_patch_tokens_of_the_chosen_block(tiny):
    from transformers import CLIPVisionModel

    spec = {"kind": "vision", "family": "clip", "path": str(tiny["clip"])}
    ref = CLIPVisionModel.from_pretrained(str(tiny["clip"])).eval()
    with torch.no_grad():
        hidden = ref(pixel_values=X, output_hidden_states=True).hidden_states  # embeddings + 2 blocks
    penultimate = load_vision("v", {**spec, "pooling": "tokens", "layer": -2})(X)
    assert penultimate.shape == (2, (64 // 8) ** 2, 32)  # CLS dropped: 64 patches
    torch.testing.assert_close(penultimate, hidden[1][:, 1:])  # block 1 of 2 = LLaVA's layer -2
    last = load_vision("v", {**spec, "pooling": "tokens", "layer": -1})(X)
    pooled = load_vision("v", {**spec, "pooling": "pooler"})(X)
    with torch.no_grad():  # the pooler is the last block's CLS after the final norm: same forward, other slice
        torch.testing.assert_close(ref.post_layernorm(hidden[-1][:, 0]), pooled)
    assert not torch.equal(last, penultimate)
    with pytest.raises(BackboneError, match="need a `layer`"):
        load_vision("v", {**spec, "pooling": "tokens"})


def test_open_clip_tokens_follow_the_same_layer_convention(tiny):
    spec = {"kind": "vision", "family": "open_clip", "path": f"local-dir:{tiny['open_clip']}"}
    bb = load_vision("v", {**spec, "pooling": "tokens", "layer": -2})
    visual = bb.model.visual
    with torch.no_grad():
        x = visual._embeds(X)
        outs = []
        for blk in visual.transformer.resblocks:  # batch-first blocks
            x = blk(x)
            outs.append(x)
    torch.testing.assert_close(bb(X), outs[-2][:, 1:])
    torch.testing.assert_close(load_vision("v", {**spec, "pooling": "tokens", "layer": 1})(X), outs[0][:, 1:])
    assert bb(X).shape == (2, 64, 32)


def test_dinov2_tokens_of_a_block_skip_the_final_norm(tiny):
    from transformers import AutoModel

    spec = {"kind": "vision", "family": "dinov2", "path": str(tiny["dinov2"]), "pooling": "tokens"}
    with torch.no_grad():
        out = AutoModel.from_pretrained(str(tiny["dinov2"])).eval()(pixel_values=X, output_hidden_states=True)
    torch.testing.assert_close(load_vision("v", spec)(X), out.last_hidden_state[:, 1:])
    torch.testing.assert_close(load_vision("v", {**spec, "layer": -2})(X), out.hidden_states[-2][:, 1:])
