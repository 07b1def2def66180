"""LLaVA vision towers: an image in, ``[n_tokens, hidden_size]`` image tokens out (the connector's input).

    clip       CLIP vision (HF): the patch tokens of ``hidden_states[layer]`` (LLaVA-1.5: -2, the
               penultimate block's output, no final norm), CLS dropped. 336 px / 14 -> 576 tokens.
    open_clip  the same for an open_clip visual transformer (same ``layer`` convention).
    dinov2     DINOv2: the patch tokens of the final, normed layer (registers skipped). 224 / 14 -> 256.
    sail       SAIL-LLaVA: DINOv2 final-layer ``[CLS ; patch_i]`` for every patch ``[N, 2 * hidden]`` (the
               block of the align run's backbone ``layer`` if it names one: the head was trained on it)
               -> the align run's ``vision_layer_norm`` + ``vision_mapping_network`` per token
               -> ``[N, dim]`` (no L2 norm). The head was trained on ``[CLS ; mean patch]``; applying it
               per patch is what SAIL-LLaVA does (reference sail.md section 5).

The backbones themselves are :func:`sailflow.backbones.load_vision`; a tower only chooses their token
pooling and, for SAIL, adds the head. ``pool: k`` (optional) then average-pools the square grid of tokens
to ``k x k`` (adaptive average pooling, the cells as ``torch.nn.functional.adaptive_avg_pool2d`` cuts
them): fewer, coarser image tokens for the connector (LLaVA-1.5 keeps every patch token).
``image_aspect_ratio``: ``square`` is the processor's own resize + centre crop (LLaVA stage 1); ``pad``
first centres the image on a square of the processor's mean colour (:func:`expand2square`, LLaVA-1.5
stage 2 and evaluation), so the crop cuts nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from sailflow.backbones import VisionBackbone, load_vision

TOWER_KINDS = ("clip", "dinov2", "sail", "open_clip")
ASPECT_RATIOS = ("square", "pad")
_FAMILY = {"clip": "clip", "open_clip": "open_clip", "dinov2": "dinov2", "sail": "dinov2"}


class TowerError(ValueError):
    pass


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """``image`` centred on a ``max(W, H)`` square filled with ``background`` (LLaVA's ``expand2square``:
    the offset of the shorter side is ``(max - side) // 2``)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def image_mean(backbone: VisionBackbone) -> list[float]:
    """The normalisation mean (0-1, RGB) the backbone's preprocessing uses."""
    if backbone.spec["family"] == "open_clip":
        return list(backbone.model.visual.preprocess_cfg["mean"])
    return list(backbone.preprocess.args[0].image_mean)  # the HF image processor bound into preprocess


class SailVisionHead(torch.nn.Module):
    """The vision half of an align run's head, per token: ``[..., Dv] -> LayerNorm -> mapping -> [..., d]``.
    Keys ``vision_layer_norm.*`` / ``vision_mapping_network.*`` as in the align run (and SAIL's ``vlhead``);
    the text half is dropped (SAIL-LLaVA's ``only_vision``: it can be hundreds of millions of parameters)."""

    def __init__(self, head):
        super().__init__()
        self.config = dict(head.config)
        self.vision_layer_norm, self.vision_mapping_network = head.vision_layer_norm, head.vision_mapping_network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_mapping_network(self.vision_layer_norm(x.to(self.vision_layer_norm.weight.dtype)))


class VisionTower(torch.nn.Module):
    """``forward(pixel_values [B, 3, H, W]) -> [B, n_tokens, hidden_size]`` in the tower's dtype.

    Frozen by default (no autograd through it); :meth:`set_trainable` unlocks the backbone and/or the
    SAIL head. Frozen parts stay in eval mode whatever ``train()`` says."""

    def __init__(self, kind: str, spec: dict, backbone: VisionBackbone, head: torch.nn.Module | None,
                 image_aspect_ratio: str):
        super().__init__()
        self.kind, self.spec, self.image_aspect_ratio = kind, spec, image_aspect_ratio
        self.backbone, self.head = backbone, head
        self.pool = None if spec.get("pool") is None else int(spec["pool"])
        self.tower_trainable = self.head_trainable = False
        self.background = tuple(int(255 * m) for m in image_mean(backbone))  # as LLaVA: truncated, not rounded
        self.eval()
        x = self.preprocess(Image.new("RGB", (64, 64)))
        self.image_size = (int(x.shape[1]), int(x.shape[2]))
        param = next(backbone.parameters())
        tokens = self(torch.zeros(1, 3, *self.image_size, device=param.device, dtype=param.dtype))
        self.n_tokens, self.hidden_size = int(tokens.shape[1]), int(tokens.shape[2])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A PIL image (any mode) -> ``[3, H, W]`` float32 pixel values, as the backbone's processor
        gives them (after :func:`expand2square` when ``image_aspect_ratio`` is ``pad``)."""
        image = image.convert("RGB")
        if self.image_aspect_ratio == "pad":
            image = expand2square(image, self.background)
        return self.backbone.preprocess(image)

    @property
    def patch_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels of the input that one patch token covers, from the backbone's config
        (HF CLIP / DINOv2 ``config.patch_size``, open_clip ``visual.patch_size``)."""
        model = self.backbone.model
        size = getattr(getattr(model, "config", None), "patch_size", None)
        if size is None:
            size = getattr(getattr(model, "visual", None), "patch_size", None)
        if size is None:
            raise TowerError(f"vision tower {self.spec.get('name')!r} ({self.kind}): its backbone states no patch size")
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The forward with autograd wherever a part is trainable."""
        x = pixel_values.to(next(self.backbone.parameters()).dtype)
        feats = self.backbone.features(x) if self.tower_trainable else self.backbone(x)
        feats = feats if self.head is None else self.head(feats)
        return feats if self.pool is None else self._pool_grid(feats)

    def _pool_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, side * side, d] -> [B, pool * pool, d]``: the token grid average-pooled, row-major as the patches."""
        B, n, d = tokens.shape
        side = int(round(n ** 0.5))
        if side * side != n or not 1 <= self.pool <= side:
            raise TowerError(f"vision tower {self.spec.get('name')!r}: pool {self.pool} needs a square grid of at least "
                             f"{self.pool} x {self.pool} tokens; this tower gives {n}")
        grid = tokens.transpose(1, 2).reshape(B, d, side, side)
        return torch.nn.functional.adaptive_avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.tower_trainable or self.head_trainable:
            return self.tokens(pixel_values)
        with torch.no_grad():
            return self.tokens(pixel_values)

    def set_trainable(self, tower: bool, head: bool = False) -> None:
        """Unlock (or freeze) the backbone (SAIL-LLaVA ``unlock_vision_tower``, miniVLM) and the SAIL
        head (``tune_alignment_layer``)."""
        if head and self.head is None:
            raise TowerError(f"vision tower {self.spec.get('name')!r} ({self.kind}) has no alignment head to train; "
                             "only a `sail` tower has one")
        self.tower_trainable, self.head_trainable = bool(tower), bool(head)
        self.backbone.model.requires_grad_(self.tower_trainable)
        if self.tower_trainable:
            self._freeze_unreached()
        if self.head is not None:
            self.head.requires_grad_(self.head_trainable)
        self.train(self.training)

    def _freeze_unreached(self) -> None:
        """Keep frozen the backbone weights the image tokens do not depend on: an open_clip CLIP's text
        half, logit scale, final norm and projection; blocks after ``layer``. They would get no gradient,
        which DDP (``find_unused_parameters=False``) takes for an error."""
        params = [p for p in self.backbone.model.parameters() if p.requires_grad]
        x = torch.zeros(1, 3, *self.image_size, device=params[0].device, dtype=params[0].dtype)
        grads = torch.autograd.grad(self.backbone.features(x).float().sum(), params, allow_unused=True)
        for p, g in zip(params, grads):
            if g is None:
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "VisionTower":
        super().train(mode)
        if not self.tower_trainable:
            self.backbone.eval()
        if self.head is not None and not self.head_trainable:
            self.head.eval()
        return self

    def describe(self) -> dict:
        """What this tower is, for manifests (JSON-able)."""
        out = {"kind": self.kind, "name": self.spec.get("name"), "backbone": self.backbone.spec,
               "n_tokens": self.n_tokens, "hidden_size": self.hidden_size, "image_size": list(self.image_size),
               "image_aspect_ratio": self.image_aspect_ratio, "background": list(self.background),
               "pooling": self.backbone.spec["pooling"], "layer": self.backbone.spec.get("layer"), "pool": self.pool,
               "trainable": {"tower": self.tower_trainable, "head": self.head_trainable}}
        if self.head is not None:
            out["align_dir"] = str(self.spec["align_dir"])
            out["head"] = self.head.config
        return out


def _token_spec(kind: str, spec: dict) -> dict:
    """The backbone spec with the token pooling the tower needs (the configured one is for encoding)."""
    bb = {**spec["backbone"]}
    family = bb.get("family")
    if family != _FAMILY[kind]:
        raise TowerError(f"vision tower {spec.get('name')!r}: a {kind!r} tower needs a {_FAMILY[kind]} backbone, "
                         f"not family {family!r}")
    if kind in ("clip", "open_clip"):
        bb.update(pooling="tokens", layer=int(-2 if spec.get("layer") is None else spec["layer"]))  # LLaVA-1.5: -2
    elif kind == "dinov2":
        bb.update(pooling="tokens")
        bb.pop("layer", None)  # final normed layer; a tower spec may name another block
        if spec.get("layer") is not None:
            bb["layer"] = int(spec["layer"])
    else:  # sail: the layer the align run's head was trained on (its backbone's `layer`, default final)
        bb.update(pooling="tokens_cls")
    return bb


def load_tower(spec: dict, *, image_aspect_ratio: str = "square", device: str | torch.device = "cpu") -> VisionTower:
    """Build the vision tower ``spec`` describes (see the module docstring for ``kind``):

        {"kind": "clip" | "open_clip", "backbone": {...}, "name": str, "layer": -2}
        {"kind": "dinov2", "backbone": {...}, "name": str}   (any kind: "pool": k, see the module docstring)
        {"kind": "sail", "backbone": {...the align run's vision backbone...}, "name": str,
         "align_dir": "results/<align_run>/align"}

    ``backbone`` is a ``backbones:`` config entry (path, revision, family, pooling...). Frozen, eval mode."""
    kind = spec.get("kind")
    if kind not in TOWER_KINDS:
        raise TowerError(f"vision tower {spec.get('name')!r}: unknown kind {kind!r}; choose one of {list(TOWER_KINDS)}")
    if image_aspect_ratio not in ASPECT_RATIOS:
        raise TowerError(f"image_aspect_ratio {image_aspect_ratio!r}: choose one of {list(ASPECT_RATIOS)}")
    backbone = load_vision(spec.get("name", kind), _token_spec(kind, spec), device)
    head = None
    if kind == "sail":
        from sailflow.align.heads import AlignmentHead

        align_dir = Path(spec["align_dir"])
        if not (align_dir / "head.safetensors").exists():
            raise TowerError(f"vision tower {spec.get('name')!r}: no alignment head at {align_dir}/head.safetensors; "
                             "train the align run first (or check `align_dir`)")
        head = SailVisionHead(AlignmentHead.load(align_dir))
        width = 2 * backbone.model.config.hidden_size
        if head.config["vision_dim"] != width:
            raise TowerError(f"vision tower {spec.get('name')!r}: the head in {align_dir} takes {head.config['vision_dim']}-d "
                             f"vision features but [CLS ; patch] of this DINOv2 is {width}-d: is `backbone` the align "
                             "run's vision backbone (with concat pooling)?")
        head.requires_grad_(False).to(device)
    return VisionTower(kind, spec, backbone, head, image_aspect_ratio)
