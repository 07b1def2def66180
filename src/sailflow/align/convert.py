"""Convert a released SAIL head (a pickled ``.pt``) into sailflow's safetensors head, once.

    python -m sailflow.align.convert sail_dinov2l_nv2.pt results/sail_released/align [--head star --dim 1024 --width-factor 8]

This is the only place sailflow unpickles anything, and only when a user runs it on a file they
chose; ``torch.load(weights_only=True)`` refuses arbitrary objects. DDP ``module.`` prefixes are
stripped and the state dict must load *strictly* (SAIL's own loader used strict=False, which
silently leaves a mismatched head random).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sailflow.align.heads import AlignmentHead


def infer_dims(state: dict) -> tuple[int, int]:
    return state["vision_layer_norm.weight"].shape[0], state["text_layer_norm.weight"].shape[0]


def convert(src: str | Path, out_dir: str | Path, head: str = "star", dim: int = 1024, width_factor: int = 8) -> AlignmentHead:
    obj = torch.load(src, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    state = {k.removeprefix("module."): v for k, v in state.items()}
    vision_dim, text_dim = infer_dims(state)
    model = AlignmentHead(vision_dim, text_dim, dim=dim, head=head, width_factor=width_factor)
    model.load_state_dict(state, strict=True)
    model.save(out_dir, {"converted_from": str(src)})
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("out_dir")
    ap.add_argument("--head", default="star", choices=["star", "mlp", "linear"])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--width-factor", type=int, default=8)
    a = ap.parse_args()
    m = convert(a.src, a.out_dir, a.head, a.dim, a.width_factor)
    print(f"wrote {a.out_dir}/head.safetensors ({sum(p.numel() for p in m.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
