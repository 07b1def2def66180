"""One LLaVA training stage with transformers' Trainer (+ DeepSpeed ZeRO), resumable.

    pretrain (stage 1)   the connector only; tower and LLM frozen; template `plain`; ZeRO-2
    finetune (stage 2)   connector + LLM (or LoRA adapters on the LLM; the connector at `connector_lr` if set), and on
                         request the SAIL head (`tune_head`) and the tower (`unlock_tower`); `v1`; ZeRO-3

The LLM is a decoder (AutoModelForCausalLM) or an encoder-decoder (AutoModelForSeq2SeqLM: Flan-T5, as
CLIP-FlanT5), told apart by its config's ``is_encoder_decoder``; an encoder-decoder takes the T5
templates (`t5_plain_split_text` or `t5_plain` in stage 1, `t5_v1` in stage 2) and a decoder the others,
checked at start. T5 overflows in fp16 (pitfall 4): it trains in bf16 where the GPU has it, else fp32,
never fp16 (``precision: fp16`` with T5 is an error).

REMGCL (reference llava_family.md section 7.2): a stage whose settings have ``remgcl: {...}`` trains
``L_LM + lambda_global L_global + lambda_local L_local`` (:mod:`sailflow.llava.remgcl`) on records whose
``ocr`` field holds precomputed OCR regions. Both terms are normalised over the optimiser step as the LM
loss is (the step's sample and region counts, summed over micro-batches and ranks), so accumulation and
GPU count do not change the update; the log lines add ``lm_loss``, ``global_loss``, ``local_loss`` (step
means, so ``loss = lm_loss + lambda_global global_loss + lambda_local local_loss``) and the counts of
samples and regions used and skipped. REMGCL's own schedule is a third stage continuing from a finetuned
model; here a stage 2 starts from its run's stage 1, so the supported form is stage 2 with ``remgcl``.

``train_stage(args)`` runs in-process or under ``torchrun`` (``python -m sailflow.llava.train ARGS.json``,
launched by :func:`sailflow.gpu.launch`). The global batch is kept: gradient accumulation =
``global_batch_size / (per_device_batch_size * world)``, and the loss of an optimiser step is the mean over
all its supervised tokens (transformers' ``num_items_in_batch``), so 2 GPUs train the same model as 8.

Resuming: the Trainer's checkpoints live in ``<out_dir>/state/`` and are used only by the very same run
(:mod:`sailflow.resume`: settings, data files, previous stage, world size); a finished stage removes them.
They are transformers'/DeepSpeed's own format, written and read by this run only; the stage's outputs are
safetensors (never pickled) with a manifest, ``config.json``, that loaders follow (never folder names):

    connector.safetensors            the connector (and the SAIL head / tower when trained: head.safetensors, tower.safetensors)
    language_model/                  stage 2 full fine-tune: the LLM (save_pretrained, safetensors) + tokenizer
    adapter/                         stage 2 LoRA: the peft adapter (safetensors) + tokenizer
    config.json                      kind, tower, connector, LLM, template, image tokens, max length, settings, data counts,
                                     remgcl (the loss's settings, defaults filled in; null without it)
    train_log.jsonl                  step, loss, lr, grad norm, tokens/s (rank 0)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from sailflow.config import digest
from sailflow.io import write_json
from sailflow.resume import finish_state, prepare_state, run_identity

STAGES = ("pretrain", "finetune")
DEEPSPEED_CONFIGS = Path(__file__).parent / "deepspeed"
MANIFEST = "config.json"


class StageError(RuntimeError):
    pass


# ---- building the model --------------------------------------------------------------------------------


def _attn_implementation() -> str:
    """flash-attn 2 when installed and on a GPU, PyTorch SDPA otherwise (logged by the caller)."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def bf16_supported() -> bool:
    """bf16 on real hardware (compute capability >= 8.0), not through emulation."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


PRECISIONS = ("auto", "bf16", "fp32")


def choose_precision(precision: str, *, encoder_decoder: bool, bf16_ok: bool) -> tuple[bool, str]:
    """``(bf16, why)`` for a stage: bf16 autocast (fp32 master weights) when asked for (``auto`` or
    ``bf16``) and the GPU has it, fp32 otherwise (CPU runs always fp32). fp16 is never used: with an
    encoder-decoder (T5's feed-forward activations exceed fp16's 65504) it is an error; a decoder has
    no fp16 path here either."""
    if precision == "fp16":
        if encoder_decoder:
            raise StageError("precision fp16 with an encoder-decoder LLM (T5): T5 overflows in fp16 (NaN losses; it was "
                             "trained in bf16); set precision to bf16 (GPUs of compute capability >= 8) or fp32")
        raise StageError(f"precision fp16 is not supported for LLaVA stages; choose one of {PRECISIONS}")
    if precision not in PRECISIONS:
        raise StageError(f"precision {precision!r}: choose one of {PRECISIONS}")
    if precision == "fp32":
        return False, "fp32 (asked for)"
    if bf16_ok:
        return True, "bf16 (fp32 master weights)"
    if not torch.cuda.is_available():
        return False, "fp32 (CPU)"
    why = "fp32: this GPU has no bf16 (compute capability < 8)"
    return False, why + (", and T5 overflows in fp16" if encoder_decoder else "")


def is_encoder_decoder(llm: dict) -> bool:
    """Whether the LLM of a spec (``path``, ``revision``) is an encoder-decoder (T5), from its config."""
    from transformers import AutoConfig

    from sailflow.backbones.hub import loading
    from sailflow.backbones.spec import hub_kwargs, resolve_path

    with loading(llm.get("name", "llm"), {**llm, "family": "hf"}):
        cfg = AutoConfig.from_pretrained(resolve_path(llm["path"], llm.get("revision")), **hub_kwargs(llm))
    return bool(getattr(cfg, "is_encoder_decoder", False))


def load_llm(llm: dict, dtype: torch.dtype, attn: str):
    """(model, tokenizer): AutoModelForSeq2SeqLM for an encoder-decoder config (T5), else AutoModelForCausalLM.
    An attention implementation the model class lacks (flash-attn 2 for T5) falls back to SDPA."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from sailflow.backbones.hub import loading
    from sailflow.backbones.spec import hub_kwargs, resolve_path

    path = resolve_path(llm["path"], llm.get("revision"))
    cls = AutoModelForSeq2SeqLM if is_encoder_decoder(llm) else AutoModelForCausalLM
    if attn == "flash_attention_2" and cls is AutoModelForSeq2SeqLM:
        attn = "sdpa"  # T5 has no flash-attn 2 path (its relative position bias is an additive mask)
    with loading(llm.get("name", "llm"), {**llm, "family": "hf"}):
        model = cls.from_pretrained(path, dtype=dtype, attn_implementation=attn, use_safetensors=True, **hub_kwargs(llm))
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs(llm))
    if tokenizer.pad_token_id is None:
        raise StageError(f"llm {llm.get('name')}: its tokenizer has no pad token; LLaVA pads with it (set one in the tokenizer files)")
    return model, tokenizer


def build_model(spec: dict, *, dtype=torch.float32, device="cpu", connector_state: dict | None = None):
    """Tower + connector + LLM from a stage's args (or a manifest); returns (LlavaModel, tokenizer, tower)."""
    from sailflow.llava.connectors import build_connector, connector_tokens
    from sailflow.llava.model import LlavaModel
    from sailflow.llava.towers import load_tower

    tower = load_tower(spec["tower"], image_aspect_ratio=spec.get("image_aspect_ratio", "square"), device=device)
    llm, tokenizer = load_llm(spec["llm"], dtype, spec.get("attn_implementation") or _attn_implementation())
    c = spec["connector"]
    opts = {k: v for k, v in c.items() if k != "kind"}
    connector = build_connector(c["kind"], tower.hidden_size, llm.config.hidden_size, tower.n_tokens, **opts)
    if connector_state is not None:
        connector.load_state_dict(connector_state, strict=True)  # a newly initialised connector is an error
    n_image_tokens = connector_tokens(c["kind"], tower.n_tokens, **opts)
    model = LlavaModel(tower, connector, llm, n_image_tokens=n_image_tokens, max_length=spec["settings"]["max_length"])
    return model, tokenizer, tower


def setup_remgcl(cfg: dict | None, model, tower, tokenizer, image_aspect_ratio: str):
    """The stage's REMGCL loss from its settings' ``remgcl`` (None: none), attached to ``model.remgcl``.
    Returns ``(settings, mapper)``: the settings with defaults filled in, and the dataset's
    :class:`~sailflow.llava.remgcl.RegionMapper` onto the tower's patch grid (None when lambda_local is 0);
    ``(None, None)`` without ``remgcl``."""
    from sailflow.llava.remgcl import RegionMapper, RemgclError, RemgclLoss, RemgclSettings, patch_grid

    if cfg is None:
        return None, None
    try:
        settings = RemgclSettings.from_config(cfg)
    except RemgclError as e:
        raise StageError(f"settings.remgcl: {e}") from None
    if model.is_encoder_decoder:
        raise StageError("settings.remgcl: REMGCL's loss is implemented for decoder LLMs, and this stage's LLM is an "
                         "encoder-decoder (T5); remove `remgcl` from the stage")
    mapper = None
    if settings.lambda_local > 0:
        if image_aspect_ratio != "pad":
            raise StageError(f"settings.remgcl: the local term maps OCR boxes onto the padded square the tower sees, but "
                             f"image_aspect_ratio is {image_aspect_ratio!r}; set it to pad (the finetune default) or "
                             "lambda_local to 0")
        try:
            grid = patch_grid(tower.image_size, tower.patch_size, n_tokens=model.n_image_tokens)
        except RemgclError as e:
            raise StageError(f"settings.remgcl: {e}") from None
        mapper = RegionMapper(tokenizer, grid, settings.min_overlap)
    model.remgcl = RemgclLoss.from_tokenizer(settings, tokenizer)
    return settings, mapper


def _lora_targets(llm) -> list[str]:
    """Every nn.Linear leaf of the LLM but the output head (LLaVA's find_all_linear_names)."""
    names = {name.rsplit(".", 1)[-1] for name, m in llm.named_modules() if isinstance(m, torch.nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def set_trainable(model, stage: str, s: dict) -> None:
    """Freeze everything, then unfreeze what the stage trains (LoRA: peft marks its adapters). The tower
    (``unlock_tower``) and the SAIL head (``tune_head``) may train in either stage: miniVLM trains its
    ViT in both, SAIL-LLaVA in stage 2 only; the LLM trains in stage 2 only."""
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    model.vision_tower.set_trainable(tower=bool(s.get("unlock_tower")), head=bool(s.get("tune_head")))
    if stage == "finetune":
        if s.get("lora"):
            from peft import LoraConfig, get_peft_model

            lora = s["lora"]
            cfg = LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora.get("dropout", 0.05)),
                             bias="none", target_modules=_lora_targets(model.language_model),
                             task_type="SEQ_2_SEQ_LM" if model.is_encoder_decoder else "CAUSAL_LM")
            model.language_model = get_peft_model(model.language_model, cfg)
        else:
            model.language_model.requires_grad_(True)


TOWER_FILES = {"head.safetensors": "head", "tower.safetensors": "backbone"}  # trained tower parts a stage folder may hold


def load_tower_weights(tower, directory: str | Path) -> list[str]:
    """Load the trained tower parts a stage saved in ``directory`` (the SAIL head, the backbone) into
    ``tower``; returns the files loaded. Stage 2 starts from what stage 1 trained; loaders of a stage use
    what it holds. Which parts: those its manifest lists as ``trained``, never whatever files happen to be
    in the folder (a file left by an earlier run with other settings is not this stage's)."""
    from safetensors.torch import load_file

    from sailflow.io import read_json

    trained = set(read_json(Path(directory) / MANIFEST).get("trained", []))
    loaded = []
    for name, part in TOWER_FILES.items():
        if name in trained:
            getattr(tower, part).load_state_dict(load_file(str(Path(directory) / name)), strict=True)
            loaded.append(name)
    return loaded


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


# ---- data ----------------------------------------------------------------------------------------------


def load_records(data: list[dict], on_error: str, log) -> tuple[list, Counter]:
    from sailflow.llava.data import read_records, records_from_dataset

    records, drops = [], Counter()
    for d in data:
        if "json" in d:
            r, dr = read_records(d["json"], d.get("images") or ".", on_error=on_error, log=log)
        else:
            r, dr = records_from_dataset(d["samples"], d["images_dirs"], d["caption_source"], dataset=d["dataset"])
        records += r
        drops.update(dr)
        print(f"[llava] data {d.get('json') or d.get('dataset')}: {len(r)} records, dropped {dict(dr)}", file=log, flush=True)
    return records, drops


# ---- the Trainer --------------------------------------------------------------------------------------


def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class LlavaTrainer(Trainer):
        """transformers' Trainer with LLaVA's sampler, a separate connector lr, and checkpoints of the
        trainable weights only (the frozen tower and LLM are the inputs, not state)."""

        group_by_modality = False
        connector_lr = None
        world_for_grouping = 1
        remgcl_sums = None  # REMGCL: RemgclResult.stats() summed over this rank's micro-batches since the last log line
        remgcl_mark = None  # ... and the global step of that line

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            """The step's micro-batches, each told the step's REMGCL counts (``remgcl_items``): summed over the
            micro-batches, and over the ranks exactly where ``num_items_in_batch`` is, so the terms share the
            LM loss's normalisation. (Without ``num_items_in_batch`` the Trainer divides each micro-batch's mean
            loss by the accumulation steps; the terms are then micro-batch means too.)"""
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            loss = getattr(self.model, "remgcl", None)
            if loss is not None and batches and num_items is not None:
                counts = torch.tensor([loss.count(b["labels"], b.get("ocr_regions"), b.get("has_image")) for b in batches],
                                      dtype=torch.long).reshape(-1, 2).sum(0)
                if self.args.average_tokens_across_devices and self.args.world_size > 1:
                    counts = self.accelerator.gather(counts.to(device)).reshape(-1, 2).sum(0).cpu()
                for b in batches:
                    b["remgcl_items"] = counts
            return batches, num_items

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.remgcl_mark is None:
                self.remgcl_mark = self.state.global_step  # the first step of this session (after a resume, its step)
            loss = super().training_step(model, inputs, num_items_in_batch)
            stats = getattr(self.model, "remgcl_stats", None)
            if stats is not None:
                self.remgcl_sums = stats if self.remgcl_sums is None else self.remgcl_sums + stats
                self.model.remgcl_stats = None
            return loss

        def log(self, logs, start_time=None):
            if "loss" in logs and getattr(self.model, "remgcl", None) is not None:
                logs.update(self._remgcl_logs())
            super().log(logs, start_time)

        def _remgcl_logs(self) -> dict:
            """The REMGCL terms since the last log line on the scale of the Trainer's ``loss`` (the mean over
            those optimiser steps of each step's mean), and the counts summed over micro-batches and ranks.
            A collective where there are several ranks (the Trainer logs on every rank)."""
            from sailflow.llava.remgcl import STATS

            sums = self.remgcl_sums if self.remgcl_sums is not None else torch.zeros(len(STATS))
            sums = sums.to(self.args.device)
            world = self.args.world_size
            if world > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            steps = max(1, self.state.global_step - (self.remgcl_mark or 0))
            # as the Trainer's loss: each rank's loss (x world where the token count spans the ranks), averaged over ranks
            per_rank = 1 if self.args.average_tokens_across_devices else world
            out = {k: v / steps / per_rank for k, v in zip(STATS[:3], sums[:3].tolist())}
            out.update({k: int(round(v)) for k, v in zip(STATS[3:], sums[3:].tolist())})
            self.remgcl_sums, self.remgcl_mark = None, self.state.global_step
            return out

        def _get_train_sampler(self, train_dataset=None):
            if not self.group_by_modality:
                return super()._get_train_sampler(train_dataset)
            from sailflow.llava.data import ModalityLengthGroupedSampler

            ds = train_dataset if train_dataset is not None else self.train_dataset
            return ModalityLengthGroupedSampler(ds.modality_lengths, self.args.per_device_train_batch_size,
                                                self.world_for_grouping, seed=self.args.data_seed or self.args.seed)

        def create_optimizer(self, model=None):
            if self.optimizer is None and self.connector_lr is not None:
                model = self.model
                decay = set(self.get_decay_parameter_names(model))
                groups = {}
                for n, p in model.named_parameters():
                    if not p.requires_grad:
                        continue
                    lr = self.connector_lr if n.startswith("multi_modal_projector.") else self.args.learning_rate
                    wd = self.args.weight_decay if n in decay else 0.0
                    groups.setdefault((lr, wd), []).append(p)
                params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
                kwargs.pop("lr", None)
                self.optimizer = cls(params, **kwargs)
                return self.optimizer
            return super().create_optimizer(model)

        def _save(self, output_dir=None, state_dict=None):
            if not self.args.should_save:
                return
            import safetensors.torch

            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            state = {n: t.detach().cpu().contiguous() for n, t in (state_dict or {}).items()} if state_dict else trainable_state(self.model)
            keep = {n for n, p in self.model.named_parameters() if p.requires_grad}
            state = {n: t for n, t in state.items() if n in keep}
            safetensors.torch.save_file(state, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})

        def _issue_warnings_after_load(self, load_result):
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            missing = sorted(trainable & set(load_result.missing_keys))
            if missing:
                raise StageError(f"the checkpoint lacks trainable weights {missing[:5]}; it is not a checkpoint of this stage")

    class JsonlLog(TrainerCallback):
        """train_log.jsonl on rank 0: one line per logging step; rewritten from the checkpoint's history on resume."""

        def __init__(self, path: Path, log, tokens_per_step: float):
            self.path, self.log, self.tokens_per_step = path, log, tokens_per_step
            self.t0 = time.perf_counter()
            self.last_step = 0

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                keep = [h for h in state.log_history if "loss" in h]
                with open(self.path, "w") as f:
                    for h in keep:
                        f.write(json.dumps(_record(h)) + "\n")
            self.last_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            rec = _record({**logs, "step": state.global_step, "epoch": state.epoch})
            steps = max(1, state.global_step - self.last_step)
            rec["tokens_per_s"] = round(self.tokens_per_step * steps / max(now - self.t0, 1e-9), 1)
            self.t0, self.last_step = now, state.global_step
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), file=self.log, flush=True)

    return LlavaTrainer, JsonlLog


STALL_LOGS = 20  # consecutive logged steps with a loss or gradient norm of exactly 0 that stop a stage


def _health_callback(log, stall_logs: int = STALL_LOGS):
    """Stops the stage (:class:`StageError`, its checkpoints kept) at a logged loss or gradient norm that is
    NaN or infinite, or at ``stall_logs`` logged steps in a row whose loss or gradient norm is exactly 0: the
    silent failures of LLaVA training (pitfalls 3 and 4: fp16 overflow, ZeRO-2's reduction bug with
    ``overlap_comm``), which would otherwise run to the end and save weights that learnt nothing. The
    logged loss is already averaged over the processes, so every rank stops at the same step."""
    from transformers import TrainerCallback

    class Health(TrainerCallback):
        zeros = 0

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            values = {k: float(logs[k]) for k in ("loss", "grad_norm") if logs.get(k) is not None}
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                raise StageError(f"step {state.global_step}: {bad} (not finite); stopped, checkpoints kept. Causes seen in "
                                 "LLaVA training: fp16 overflow (use bf16 or fp32), a learning rate too high")
            self.zeros = self.zeros + 1 if any(v == 0.0 for v in values.values()) else 0
            if self.zeros >= stall_logs:
                raise StageError(f"step {state.global_step}: loss or gradient norm exactly 0 for {self.zeros} logged steps "
                                 f"({values}); stopped, checkpoints kept. Causes seen in LLaVA training: no supervised tokens "
                                 "(a template or tokenizer that does not fit), DeepSpeed ZeRO-2 with overlap_comm")

    return Health()


def _epoch_callback(dataset):
    """A callback that tells ``dataset`` the epoch at each epoch's start (before the DataLoader makes its
    workers), for templates that re-draw per epoch (``t5_plain_split_text``). The Trainer gives callbacks
    no epoch number: it is the whole part of ``state.epoch`` (0 at the start, k at the end of epoch k - 1,
    k + a fraction when resumed inside epoch k, restored from the checkpoint)."""
    from transformers import TrainerCallback

    class EpochToData(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kw):
            dataset.set_epoch(math.floor(state.epoch or 0))

    return EpochToData()


def _record(h: dict) -> dict:
    from sailflow.llava.remgcl import STATS

    keys = ("step", "epoch", "loss", *STATS, "learning_rate", "grad_norm")
    out = {k: (h[k] if not isinstance(h[k], float) or math.isfinite(h[k]) else None) for k in keys if k in h}  # valid JSON
    if "learning_rate" in out:
        out["lr"] = out.pop("learning_rate")
    return out


def _last_checkpoint(state_dir: Path, log=sys.stderr) -> str | None:
    """The newest complete checkpoint. The Trainer writes a checkpoint in place and its ``trainer_state.json``
    last (after the weights, optimiser and RNG states), and removes the older one only after that: a folder
    without a readable state was cut off while saving (a Slurm time limit mid-save) and is skipped, so the
    rerun resumes from the one before instead of failing on it forever."""
    ckpts = sorted(state_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    for ckpt in reversed(ckpts):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return str(ckpt)
        except (OSError, ValueError):
            print(f"[llava] {ckpt}: incomplete (no readable trainer_state.json: cut off while saving), not resumed from",
                  file=log, flush=True)
    return None


def deepspeed_config(name: str | None) -> str | None:
    if not name or name == "none":
        return None
    path = DEEPSPEED_CONFIGS / f"{name}.json"
    if not path.exists():
        raise StageError(f"unknown deepspeed config {name!r}; shipped: {sorted(p.stem for p in DEEPSPEED_CONFIGS.glob('*.json'))}")
    return str(path)


def _system_note(s: dict) -> str:
    """For the stage's log line: a system prompt the run sets instead of the template's."""
    system = s.get("system_prompt")
    return "" if system is None else (" (no system prompt)" if not system else f" (system prompt {system!r})")


def train_stage(args: dict, log=sys.stderr) -> dict:
    """Train one stage. ``args``: stage, out_dir, tower, image_aspect_ratio, connector, llm, template, data,
    on_bad_record, settings, previous (stage 2: the stage-1 folder), meta. Returns what the manifest records."""
    from transformers import TrainingArguments

    from sailflow.llava.data import LlavaDataset, collate
    from sailflow.llava.templates import get_template

    stage, s = args["stage"], args["settings"]
    if stage not in STAGES:
        raise StageError(f"stage must be one of {STAGES}, not {stage!r}")
    out_dir = Path(args["out_dir"])
    state_dir = out_dir / "state"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    per_device = int(s["per_device_batch_size"])
    accum, rest = divmod(int(s["global_batch_size"]), per_device * world)
    if rest or accum < 1:
        raise StageError(f"global_batch_size {s['global_batch_size']} is not a multiple of per_device_batch_size {per_device} x {world} GPUs")
    encoder_decoder = is_encoder_decoder(args["llm"])
    bf16, precision_why = choose_precision(s.get("precision", "auto"), encoder_decoder=encoder_decoder, bf16_ok=bf16_supported())
    ds = deepspeed_config(s.get("deepspeed"))
    if ds is not None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")

    # the run's identity: settings, data files, the previous stage's weights and the world size
    inputs = {"data": [p for d in args["data"] for p in ([d["json"]] if "json" in d else d["samples"])]}
    if args.get("previous"):
        inputs["previous"] = sorted(str(p) for p in Path(args["previous"]).glob("*.safetensors"))
    if args["tower"].get("align_dir"):
        inputs["align_head"] = [str(Path(args["tower"]["align_dir"]) / "head.safetensors")]
    tower_path = str(args["tower"].get("backbone", {}).get("path", ""))
    if tower_path.startswith("local-dir:"):  # a CLIP trained here (a clip run): retrained, it is another tower
        inputs["tower"] = sorted(str(p) for p in Path(tower_path.removeprefix("local-dir:")).glob("*.safetensors"))
    runtime = ("out_dir", "meta", "log_every", "checkpoint_every", "dataloader_workers")  # not what decides the weights
    identity = run_identity({k: v for k, v in args.items() if k not in runtime},
                            inputs, world=world)
    resumable = prepare_state(state_dir, identity, log, name=f"llava {stage}") if rank == 0 else True
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        dist.barrier()  # the other ranks read the state folder rank 0 has vetted
        flag = torch.tensor([int(resumable)])
        dist.broadcast(flag, 0)
        resumable = bool(flag.item())

    torch.manual_seed(int(s["seed"]))
    connector_state = None
    if stage == "finetune":
        from safetensors.torch import load_file

        connector_state = load_file(str(Path(args["previous"]) / "connector.safetensors"))
    dtype = torch.bfloat16 if (bf16 and ds) else torch.float32
    model, tokenizer, tower = build_model(args, dtype=dtype, device="cuda" if cuda else "cpu", connector_state=connector_state)
    carried = load_tower_weights(tower, args["previous"]) if stage == "finetune" else []  # a tower stage 1 trained
    set_trainable(model, stage, s)
    model.accepts_loss_kwargs = True  # the loss is normalised by num_items_in_batch (one step = one big batch)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)

    template = get_template(args["template"], tokenizer, seed=int(s["seed"]), system=s.get("system_prompt"))
    if template.encoder_decoder != model.is_encoder_decoder:
        kind = "an encoder-decoder (T5)" if model.is_encoder_decoder else "a decoder-only"
        fits = "t5_plain_split_text / t5_plain (stage 1), t5_v1 (stage 2)" if model.is_encoder_decoder else "plain (stage 1), v1 or chat (stage 2)"
        raise StageError(f"template {args['template']!r} does not suit llm {args['llm'].get('name')!r}, {kind} LLM "
                         f"({model.language_model.config.model_type}); its templates: {fits}")
    remgcl, regions = setup_remgcl(s.get("remgcl"), model, tower, tokenizer, args.get("image_aspect_ratio", "square"))
    records, drops = load_records(args["data"], args.get("on_bad_record", "error"), log)
    dataset = LlavaDataset(records, template, tower.preprocess, model.n_image_tokens, int(s["max_length"]), tower.image_size,
                           on_error=args.get("on_bad_record", "error"), log=log, regions=regions)
    drops.update(dataset.drops)
    if dataset.mismatches:
        print(f"[llava] warning: {dataset.mismatches} conversation(s) tokenize differently in one go than segment by segment; "
              "their labels follow the segments (right by construction)", file=log, flush=True)
    n_images = sum(1 for m in dataset.modality_lengths if m > 0)
    steps_per_epoch = math.ceil(len(dataset) / (per_device * world)) // accum
    if rank == 0:
        print(f"[llava] {stage}: {len(dataset)} samples ({n_images} with an image, {len(dataset) - n_images} text-only), "
              f"dropped {dict(drops)}; world {world} x per-device {per_device} x accumulation {accum} = global batch "
              f"{s['global_batch_size']}; ~{steps_per_epoch} steps/epoch; trainable parameters {n_train:,}; "
              f"tower {tower.kind} ({model.n_image_tokens} image tokens{f', pooled to {tower.pool} x {tower.pool}' if tower.pool else ''}), "
              f"template {template.name}{_system_note(s)}, llm {model.language_model.config.model_type} "
              f"({'encoder-decoder' if encoder_decoder else 'decoder'}), deepspeed {s.get('deepspeed') or 'none'}, "
              f"precision {precision_why}, attention {model.language_model.config._attn_implementation}, "
              f"CPU threads {torch.get_num_threads()} per process", file=log, flush=True)
    if remgcl is not None and rank == 0:
        with_ocr = [r for r in dataset.records if r.ocr and r.image is not None]
        grid = f"{regions.grid[0]}x{regions.grid[1]} patch grid" if regions else "no local term"
        print(f"[llava] remgcl: L = L_LM + {remgcl.lambda_global} L_global (tau {remgcl.temperature_global}) + "
              f"{remgcl.lambda_local} L_local (tau {remgcl.temperature_local}); {len(with_ocr)} records with "
              f"{sum(len(r.ocr) for r in with_ocr)} OCR regions, {grid}", file=log, flush=True)
        if regions and not with_ocr:
            print("[llava] warning: remgcl's local term is on, but no record has `ocr` regions: it stays 0",
                  file=log, flush=True)
    if steps_per_epoch < 1:
        raise StageError(f"{len(dataset)} samples are fewer than one global batch of {s['global_batch_size']}; lower global_batch_size")

    targs = TrainingArguments(
        output_dir=str(state_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
        learning_rate=float(s["lr"]), weight_decay=float(s["weight_decay"]), warmup_steps=float(s["warmup_ratio"]),  # a float < 1 is a ratio
        lr_scheduler_type=s.get("lr_scheduler", "cosine"), num_train_epochs=float(s["epochs"]), max_grad_norm=float(s.get("max_grad_norm", 1.0)),
        bf16=bf16, use_cpu=not cuda, deepspeed=ds, activation_checkpointing=bool(s.get("gradient_checkpointing", False)),
        save_strategy="steps", save_steps=int(args.get("checkpoint_every", 500)), save_total_limit=1,
        logging_steps=int(args.get("log_every", 1)), seed=int(s["seed"]), data_seed=int(s["seed"]), report_to=[],
        remove_unused_columns=False, dataloader_num_workers=int(args.get("dataloader_workers", s.get("dataloader_workers", 0))), disable_tqdm=False,
        optim=s.get("optim", "adamw_torch"), ddp_find_unused_parameters=False, save_only_model=False,
    )
    LlavaTrainer, JsonlLog = _trainer_class()
    pad = tokenizer.pad_token_id
    trainer = LlavaTrainer(model=model, args=targs, train_dataset=dataset, data_collator=lambda b: collate(b, pad),
                           callbacks=[JsonlLog(out_dir / "train_log.jsonl", log, per_device * world * accum * float(sum(dataset.lengths)) / len(dataset))])
    trainer.group_by_modality = group_by_modality(bool(s.get("group_by_modality_length", False)), n_images, len(dataset) - n_images,
                                                  log if rank == 0 else None)
    trainer.world_for_grouping = world * accum
    trainer.connector_lr = float(s["connector_lr"]) if s.get("connector_lr") else None
    trainer.add_callback(_health_callback(log))
    if template.draws_per_epoch:
        trainer.add_callback(_epoch_callback(dataset))
    resume = _last_checkpoint(state_dir, log) if resumable else None
    if resume and rank == 0:
        print(f"[llava] resumed from {resume}", file=log, flush=True)
    result = trainer.train(resume_from_checkpoint=resume)

    info = {"steps": int(trainer.state.global_step), "samples": len(dataset), "image_samples": n_images, "dropped": dict(drops),
            "truncated": dataset.truncated, "tokenization_mismatches": dataset.mismatches,
            "train_loss": float(result.training_loss), "trainable_parameters": n_train, "world": world,
            "gradient_accumulation": accum, "bf16": bf16, "encoder_decoder": encoder_decoder, "tower_from_previous": carried,
            "group_by_modality_length": trainer.group_by_modality}
    info["remgcl"] = remgcl.to_dict() if remgcl is not None else None
    save_stage(trainer, model, tokenizer, tower, args, info, out_dir)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        finish_state(state_dir)
    return info


def group_by_modality(requested: bool, n_images: int, n_text: int, log=None) -> bool:
    """LLaVA's ``group_by_modality_length`` where it means something: on only when the stage's data holds
    both image and text-only records. With one modality it is off, a plain random sampler (as Quilt-LLaVA
    runs its all-image data; LLaVA's sampler crashes there), and the log says so."""
    if requested and (n_images == 0 or n_text == 0):
        if log is not None:
            print(f"[llava] group_by_modality_length: off, the data has {'no text-only' if n_text == 0 else 'no image'} "
                  "records (a random sampler)", file=log, flush=True)
        return False
    return requested


def save_stage(trainer, model, tokenizer, tower, args: dict, info: dict, out_dir: Path) -> None:
    """Gather the trained weights (all ranks: under ZeRO-3 this is a collective), write them on rank 0,
    then reload each ``*.safetensors`` of the stage folder and check it against the in-memory tensors (values);
    the LLM's folder (``language_model/`` or ``adapter/``) is read back by its headers: no empty tensor, the
    shapes in memory (never a KB-sized empty file). Tower files an earlier run left are removed."""
    from safetensors.torch import load_file, save_file

    from sailflow.io import atomic_path

    stage, s = args["stage"], args["settings"]
    full = trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else model)
    if not trainer.args.should_save:
        return
    full = {k: v.detach().cpu().contiguous() for k, v in full.items()}
    written = {}

    def save(name: str, prefix: str):
        part = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        if not part:
            raise StageError(f"no weights under {prefix!r} to save")
        with atomic_path(out_dir / name) as tmp:
            save_file(part, str(tmp), metadata={"format": "sailflow-llava", "stage": stage})
        written[name] = part

    save("connector.safetensors", "multi_modal_projector.")
    # the tower parts trained in this stage or carried from stage 1: a stage folder holds its whole model
    carried = info.get("tower_from_previous", [])
    if s.get("tune_head") or "head.safetensors" in carried:
        save("head.safetensors", "vision_tower.head.")
    if s.get("unlock_tower") or "tower.safetensors" in carried:
        save("tower.safetensors", "vision_tower.backbone.")
    for name in set(TOWER_FILES) - set(written):  # left by an earlier run with other settings: not this stage's
        (out_dir / name).unlink(missing_ok=True)
    llm_dir, stale_dir = ("adapter", "language_model") if s.get("lora") else ("language_model", "adapter")
    if stage == "finetune":
        import shutil

        llm_state = {k[len("language_model."):]: v for k, v in full.items() if k.startswith("language_model.")}
        shutil.rmtree(out_dir / stale_dir, ignore_errors=True)  # the same: left by an earlier run with(out) LoRA
        _save_dir(out_dir / llm_dir, lambda d: (model.language_model.save_pretrained(d, state_dict=llm_state), tokenizer.save_pretrained(d)))
    for name, part in written.items():  # reload check (pitfall: ZeRO-3 writing placeholders)
        back = load_file(str(out_dir / name))
        bad = [k for k, v in part.items() if k not in back or back[k].shape != v.shape or v.numel() == 0 or not torch.equal(back[k], v)]
        if bad:
            raise StageError(f"{out_dir / name}: tensors {bad[:5]} did not save correctly")
    if stage == "finetune":  # the LLM's folder: every tensor read back by its header, none empty, shapes as in memory
        _check_saved_dir(out_dir / llm_dir, None if s.get("lora") else llm_state)
    manifest = {
        "kind": "llava-stage", "stage": stage, "tower": tower.describe(), "tower_spec": args["tower"], "image_aspect_ratio": args.get("image_aspect_ratio", "square"),
        "connector": args["connector"], "llm": args["llm"], "template": args["template"], "n_image_tokens": model.n_image_tokens,
        "max_length": int(s["max_length"]), "settings": s, "lora": bool(s.get("lora")),
        "trained": sorted(written) + ([f"{llm_dir}/"] if stage == "finetune" else []),
        "previous": args.get("previous"), "fingerprint": digest({k: v for k, v in args.items() if k != "out_dir"}),
        **info, **args.get("meta", {}),
    }
    write_json(out_dir / MANIFEST, manifest)


def _check_saved_dir(folder: Path, expected: dict | None) -> None:
    """The safetensors files ``save_pretrained`` wrote into ``folder``, read back by their headers (no tensor
    data is loaded: a 7B LLM stays on disk): :class:`StageError` if there are none, if a tensor is empty
    (ZeRO-3's shape-[0] placeholders, pitfall 5) or if one's shape differs from ``expected`` (same keys)."""
    from safetensors import safe_open

    shapes = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            shapes.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    bad = [k for k, shape in shapes.items() if math.prod(shape) == 0
           or (expected is not None and k in expected and tuple(expected[k].shape) != shape)]
    if not shapes or bad:
        raise StageError(f"{folder}: " + (f"tensors {bad[:5]} did not save correctly" if shapes else "no weights were saved"))


def _save_dir(final: Path, write) -> None:
    """Write a folder under a temporary name, then rename it into place (a killed save leaves no half folder)."""
    import shutil

    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(str(tmp))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def launch_stage(args: dict, gpus: int, log) -> None:
    """Train one stage on this job's devices (:func:`sailflow.gpu.launch`): in this process on one device or
    none, under torchrun on several. A DeepSpeed stage runs under torchrun on one device (or the CPU) too:
    DeepSpeed reads its rank from the launcher's variables (without them it looks for MPI and stops with
    ``No module named 'mpi4py'``), and its process group is closed by :func:`sailflow.gpu.torchrun_entry`."""
    from sailflow.gpu import launch

    launch("sailflow.llava.train", args, gpus, Path(args["out_dir"]) / "train_args.json", log,
           in_process=None if args["settings"].get("deepspeed") else train_stage)


if __name__ == "__main__":
    from sailflow.gpu import torchrun_entry

    torchrun_entry(train_stage)
