"""A trained LLaVA run as a Python object: load it from its manifest, answer questions about images.

    from sailflow.llava.generate import VisionLanguageModel
    vlm = VisionLanguageModel.from_run("results/llava_demo")
    vlm.generate(["shape.png"], ["What colour is the shape?"])        # -> ["red"]
    vlm.chat("shape.png", "What colour is the shape?", stream=True)    # prints tokens as they come

Greedy decoding (temperature 0, one beam), the run's own template (``v1``: the vicuna_v1 prompt ending in
"ASSISTANT:"; ``chat``: the tokenizer's chat template), ``"<image>\\n" + question``, the image
preprocessed as in training (``pad`` for LLaVA-1.5 stage 2). Batches are left-padded, so a batch gives
the same answers as one question at a time. Loading follows the stage's ``config.json`` (never folder
names): the tower (its backbone, and the align run's head for a SAIL tower), the trained connector, the
LLM (fine-tuned, or the base LLM with the LoRA adapter merged), the tokenizer saved with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sailflow.io import read_json


def _rooted(path: str, root: Path) -> str:
    """Paths in a manifest are relative to the workflow folder: find them from any working directory
    (an open_clip ``local-dir:`` path too, e.g. a CLIP trained by a clip run)."""
    prefix = "local-dir:" if path.startswith("local-dir:") else ""
    p = Path(path[len(prefix):])
    if p.is_absolute() or p.exists() or not (root / p).exists():
        return path
    return prefix + str(root / p)


def _root_spec(spec: dict, root: Path, keys=("path", "align_dir")) -> dict:
    out = dict(spec)
    for k in keys:
        if isinstance(out.get(k), str):
            out[k] = _rooted(out[k], root)
    for k, v in out.items():
        if isinstance(v, dict):
            out[k] = _root_spec(v, root, keys)
    return out


def stage_dir(run_or_stage: str | Path) -> Path:
    """A run folder (its finetune stage, else pretrain) or a stage folder."""
    p = Path(run_or_stage)
    if (p / "config.json").exists() and (p / "connector.safetensors").exists():
        return p
    for stage in ("finetune", "pretrain"):
        if (p / "llava" / stage / "config.json").exists():
            return p / "llava" / stage
    raise FileNotFoundError(f"{p}: no finished LLaVA stage (llava/finetune/config.json or llava/pretrain/config.json)")


def load_stage(directory: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(LlavaModel, tokenizer, manifest) of a finished stage, in eval mode."""
    from safetensors.torch import load_file

    from sailflow.llava.train import build_model, load_tower_weights

    d = stage_dir(directory)
    manifest = read_json(d / "config.json")
    root = d.resolve().parents[3] if len(d.resolve().parents) > 3 else Path.cwd()  # <root>/results/<run>/llava/<stage>
    spec = _root_spec({"tower": manifest["tower_spec"], "llm": manifest["llm"], "connector": manifest["connector"],
                       "image_aspect_ratio": manifest["image_aspect_ratio"], "settings": {"max_length": manifest["max_length"]}}, root)
    if manifest["stage"] == "finetune" and not manifest.get("lora"):
        spec["llm"] = {**spec["llm"], "path": str(d / "language_model"), "revision": None}
    model, tokenizer, tower = build_model(spec, dtype=dtype, device=device, connector_state=load_file(str(d / "connector.safetensors")))
    if manifest.get("lora"):
        from peft import PeftModel

        model.language_model = PeftModel.from_pretrained(model.language_model, str(d / "adapter")).merge_and_unload()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(d / "adapter"))
    load_tower_weights(tower, d)  # the SAIL head / backbone the stage trained (or carried from stage 1)
    return model.eval().to(device), tokenizer, manifest


def _rgb(image):
    """An image path, encoded bytes or a PIL image as RGB, read as LLaVA reads them (stored pixels, no EXIF
    rotation: :func:`sailflow.data.images.decode_rgb_as_stored`)."""
    from sailflow.data.images import decode_rgb_as_stored, image_rgb

    return image_rgb(image, decode_rgb_as_stored)


class VisionLanguageModel:
    """A finished LLaVA stage with its tokenizer, template and image preprocessing."""

    def __init__(self, model, tokenizer, manifest: dict, device: str = "cpu"):
        from sailflow.llava.templates import get_template

        self.model, self.tokenizer, self.manifest, self.device = model, tokenizer, manifest, device
        self.template = get_template(manifest["template"], tokenizer, system=manifest.get("settings", {}).get("system_prompt"))

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None) -> "VisionLanguageModel":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, manifest = load_stage(run_dir, device=device)
        return cls(model, tokenizer, manifest, device)

    def _pixels(self, images) -> torch.Tensor:
        """Preprocessed images; ``None`` (a text-only question) gets a black image whose features are
        spliced with zero length (its prompt has no image placeholder)."""
        from PIL import Image

        blank = Image.new("RGB", (8, 8))
        return torch.stack([self.model.vision_tower.preprocess(_rgb(im) if im is not None else blank) for im in images])

    def prompt_ids(self, question: str, has_image: bool = True) -> list[int]:
        return self.template.prompt(question, has_image)

    @torch.no_grad()
    def generate(self, images, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 16) -> list[str]:
        """Greedy answers to ``prompts`` (one per image; image paths, bytes or PIL images, or None for a
        text-only question)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        out = []
        for i in range(0, len(prompts), batch_size):
            ims, ps = images[i : i + batch_size], prompts[i : i + batch_size]
            ids = self.model.generate([self.prompt_ids(p, im is not None) for im, p in zip(ims, ps)], self._pixels(ims), max_new_tokens=max_new_tokens,
                                      stop_token_ids=self.template.stop_token_ids(), pad_token_id=self.tokenizer.pad_token_id)
            out += [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids]
        return out

    @torch.no_grad()
    def chat(self, image, question: str, max_new_tokens: int = 256, stream: bool = False, file=sys.stdout) -> str:
        """One answer; with ``stream`` the tokens are printed to ``file`` as they are generated."""
        if not stream:
            return self.generate([image], [question], max_new_tokens)[0]
        from transformers import TextStreamer

        from sailflow.llava.model import greedy_decoding

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                print(text, end="" if not stream_end else "\n", file=file, flush=True)

        m = self.model
        ids = torch.tensor([self.prompt_ids(question, image is not None)], device=self.device)
        embeds, attn, _, _ = m.prepare(ids, None, None, self._pixels([image]).to(self.device), padding_side="left")
        streamer = _Streamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        stops = self.template.stop_token_ids()
        with greedy_decoding(m.language_model, max_new_tokens=max_new_tokens, stop_token_ids=stops,
                             pad_token_id=self.tokenizer.pad_token_id) as config:
            row = m.language_model.generate(inputs_embeds=embeds, attention_mask=attn.long(), generation_config=config,
                                            streamer=streamer)[0].tolist()
        row = row[: next((i for i, t in enumerate(row) if t in stops), len(row))]
        return self.tokenizer.decode(row, skip_special_tokens=True).strip()
