"""Export a finished LLaVA run to transformers' ``LlavaForConditionalGeneration`` (results/{run}/llava/hf/),
so that stock transformers (and lmms-eval, vLLM, SGLang) load it with ``from_pretrained``.

Possible when the parts are those of LLaVA-1.5: a CLIP tower (patch tokens of ``hidden_states[layer]``,
CLS dropped: ``vision_feature_select_strategy="default"``) or a DINOv2 tower read at a ``layer`` (the
final *normed* output a SAIL-LLaVA-style DINOv2 tower uses is not a hidden state transformers' Llava can
select), an ``mlp2x_gelu`` connector (-> ``multi_modal_projector.linear_1/linear_2``, exact GELU) and a
LLaMA or Qwen2 LLM (LoRA adapters are merged into the unquantised base first). Other towers (SAIL, open_clip)
and connectors (resampler) keep sailflow's own format (config.json manifest + safetensors) and loader.

``<image>`` becomes a real token of the tokenizer (embeddings resized with mean initialisation, as
transformers' own LLaVA converter does); the processor expands it to ``image_seq_length`` copies. After
writing, the export is loaded back with ``from_pretrained`` and must give the same greedy tokens as our
model on a probe image; otherwise nothing is left under the final name.

Preprocessing note: LLaVA-1.5 pads images to a square of the processor's mean colour before the processor
(``image_aspect_ratio: pad``); transformers' ``CLIPImageProcessor`` does not. The manifest records it
(``image_aspect_ratio``); serve padded images for exactly the numbers of this run.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXPORTABLE_TOWERS = ("clip", "dinov2")
EXPORTABLE_LLMS = ("llama", "qwen2")


def exportable(tower_kind: str, connector_kind: str, lora: bool = False, tower_layer=None, pool=None) -> bool:
    """Whether transformers' Llava can hold these parts (decided from the config, torch-free). It has no token
    pooling between the tower and the projector."""
    if connector_kind != "mlp2x_gelu" or tower_kind not in EXPORTABLE_TOWERS or pool is not None:
        return False
    return tower_kind == "clip" or tower_layer is not None


class ExportError(RuntimeError):
    pass


def export_hf(stage: str | Path, out_dir: str | Path, *, log=sys.stderr) -> dict:
    """Write the HF export of a finished stage into ``out_dir`` (atomically) and check it; returns its summary."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from sailflow.io import write_json
    from sailflow.llava.generate import VisionLanguageModel, load_stage
    from sailflow.llava.model import greedy_decoding
    from sailflow.llava.train import _save_dir

    model, tokenizer, manifest = load_stage(stage)
    tower = model.vision_tower
    spec = manifest["tower_spec"]
    if not exportable(tower.kind, manifest["connector"]["kind"], manifest.get("lora"), spec.get("layer"), spec.get("pool")):
        raise ExportError(f"{stage}: a {tower.kind} tower with a {manifest['connector']['kind']} connector has no transformers "
                          "Llava equivalent; the run stays in sailflow's format (load it with VisionLanguageModel.from_run)")
    llm = model.language_model
    if llm.config.model_type not in EXPORTABLE_LLMS:
        raise ExportError(f"{stage}: LLM type {llm.config.model_type!r}: exported are {EXPORTABLE_LLMS}")
    vision = tower.backbone.model
    if tower.kind == "dinov2" and int(getattr(vision.config, "num_register_tokens", 0) or 0):
        raise ExportError(f"{stage}: DINOv2 with register tokens: transformers' Llava would feed them to the LLM")
    layer = tower.backbone.spec.get("layer")

    tok = tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    llm.resize_token_embeddings(len(tok), mean_resizing=True)
    cfg = LlavaConfig(vision_config=vision.config.to_dict() | {"model_type": vision.config.model_type}, text_config=llm.config.to_dict(),
                      image_token_index=image_id, image_seq_length=tower.n_tokens, projector_hidden_act="gelu",
                      vision_feature_select_strategy="default", vision_feature_layer=int(layer), multimodal_projector_bias=True,
                      tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)))
    hf = LlavaForConditionalGeneration(cfg).eval()
    hf.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    proj = model.multi_modal_projector
    hf.model.multi_modal_projector.linear_1.load_state_dict(proj[0].state_dict(), strict=True)
    hf.model.multi_modal_projector.linear_2.load_state_dict(proj[2].state_dict(), strict=True)
    hf.model.language_model.load_state_dict(llm.model.state_dict(), strict=True)
    hf.lm_head.load_state_dict(llm.lm_head.state_dict(), strict=True)

    processor_src = tower.backbone.spec["path"]
    image_processor = AutoImageProcessor.from_pretrained(processor_src)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=getattr(vision.config, "patch_size", None),
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    out_dir = Path(out_dir)

    def write(d):
        hf.save_pretrained(d)
        processor.save_pretrained(d)
        write_json(Path(d) / "sailflow.json", {"exported_from": str(stage), "image_aspect_ratio": manifest["image_aspect_ratio"],
                                                "template": manifest["template"], "image_token": "<image>",
                                                "system_prompt": manifest["settings"].get("system_prompt"),
                                                "note": "LLaVA-1.5 pads images to a square of the processor mean before the processor"})

    _save_dir(out_dir, write)

    # the check: stock transformers, loaded back, answers a probe like our model (greedy tokens)
    vlm = VisionLanguageModel(*load_stage(stage)[:3])
    probe = Image.new("RGB", (48, 32), (200, 40, 40))
    ours = vlm.model.generate([vlm.prompt_ids("What is in the image?")], vlm._pixels([probe]), max_new_tokens=8,
                              stop_token_ids=vlm.template.stop_token_ids(), pad_token_id=vlm.tokenizer.pad_token_id)[0]
    back = LlavaForConditionalGeneration.from_pretrained(str(out_dir)).eval()
    ids = []
    for t in vlm.prompt_ids("What is in the image?"):
        ids += [image_id] * tower.n_tokens if t < 0 else [t]
    with torch.no_grad(), greedy_decoding(back, max_new_tokens=8, stop_token_ids=vlm.template.stop_token_ids(),
                                          pad_token_id=tok.pad_token_id) as config:
        gen = back.generate(input_ids=torch.tensor([ids]), pixel_values=vlm._pixels([probe]), generation_config=config)[0, len(ids):].tolist()
    stops = vlm.template.stop_token_ids()
    gen = gen[: next((i for i, t in enumerate(gen) if t in stops), len(gen))]
    if gen != ours:
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
        raise ExportError(f"{out_dir}: the export answers {gen} where our model answers {ours}; nothing written")
    print(f"[export] {out_dir}: LlavaForConditionalGeneration ({tower.kind} tower, layer {layer}, {tower.n_tokens} image tokens); "
          f"greedy tokens on the probe equal ours: {ours}", file=log, flush=True)
    return {"path": str(out_dir), "image_token_id": image_id, "probe_tokens": ours}
