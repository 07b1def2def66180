"""What only a CUDA GPU can show (skipped on the CPU machines of development and CI; on a GPU:
``pytest tests/test_cuda.py``): a LLaVA stage trains in bf16 autocast with fp32 master weights and its losses
track an fp32 run's; the attention kernel is flash-attn 2 where installed, else SDPA; the trained model answers on the GPU
as on the CPU, batched greedy answers equal one-at-a-time ones there, and VQAScore's shared-prefix cache
gives the scores of a full pass there too."""

import json
import os

import pytest
import torch

from conftest import train_losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True, scope="module")
def full_fp32_convolutions():
    """cuDNN runs fp32 convolutions in TF32 by default (a 10-bit mantissa): off here, so that comparing the
    GPU's answers and scores with the CPU's checks the code, not TF32's rounding."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


QUESTIONS = ["What colour is the square?", "Is it a square?", "Name a colour.", "What colour is the square?", "Is it a square?"]


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory):
    """The tiny parts trained through both stages on the GPU, once in bf16 and once in fp32."""
    from llava_parts import build_parts, stage_args
    from sailflow.llava.train import train_stage

    root = tmp_path_factory.mktemp("gpu")
    parts = build_parts(root / "parts")
    runs = {}
    for precision in ("bf16", "fp32"):
        s1, s2 = root / precision / "pretrain", root / precision / "finetune"
        train_stage(stage_args(parts, "pretrain", s1, epochs=2, precision=precision), log=open(os.devnull, "w"))
        args = stage_args(parts, "finetune", s2, epochs=3, precision=precision)
        args["previous"] = str(s1)
        train_stage(args, log=open(os.devnull, "w"))
        runs[precision] = (s1, s2)
    return parts, runs


def test_stages_train_in_bf16_autocast_with_fp32_master_weights(gpu_runs):
    from safetensors import safe_open

    _, runs = gpu_runs
    for precision, stages in runs.items():
        for stage in stages:
            manifest = json.loads((stage / "config.json").read_text())
            assert manifest["bf16"] is (precision == "bf16")
            with safe_open(str(stage / "connector.safetensors"), "pt") as f:
                assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # master weights, saved as trained
    for s_bf16, s_fp32 in zip(runs["bf16"], runs["fp32"]):
        bf16, fp32 = train_losses(s_bf16 / "train_log.jsonl"), train_losses(s_fp32 / "train_log.jsonl")
        assert len(bf16) == len(fp32) and all(map(torch.isfinite, torch.tensor(bf16)))
        # the same weights and batch: bf16 autocast changes the first loss by rounding only (8 mantissa bits)
        assert abs(bf16[0] - fp32[0]) <= 2e-2 * abs(fp32[0])
        assert bf16[-1] < bf16[0] and fp32[-1] < fp32[0]


def test_attention_kernel_is_flash_attn_where_installed_else_sdpa(gpu_runs):
    from sailflow.llava.generate import VisionLanguageModel
    from sailflow.llava.train import _attn_implementation

    try:
        import flash_attn  # noqa: F401

        expected = "flash_attention_2"
    except ImportError:
        expected = "sdpa"
    assert _attn_implementation() == expected
    vlm = VisionLanguageModel.from_run(gpu_runs[1]["bf16"][1], device="cuda")
    assert vlm.model.language_model.config._attn_implementation in (expected, "sdpa")  # fp32 inference: flash-attn 2 needs 16-bit


def test_gpu_answers_batched_equal_one_at_a_time_and_the_cpus(gpu_runs):
    from sailflow.llava.generate import VisionLanguageModel

    parts, runs = gpu_runs
    gpu = VisionLanguageModel.from_run(runs["bf16"][1], device="cuda")
    images = parts["image_files"][:5]
    batched = gpu.generate(images, QUESTIONS, max_new_tokens=6, batch_size=5)
    single = [gpu.generate([im], [q], max_new_tokens=6)[0] for im, q in zip(images, QUESTIONS)]
    assert batched == single
    cpu = VisionLanguageModel.from_run(runs["bf16"][1], device="cpu")
    assert cpu.generate(images, QUESTIONS, max_new_tokens=6, batch_size=5) == batched


def test_gpu_vqascore_prefix_cache_equals_full_passes_and_the_cpu(gpu_runs):
    from sailflow.llava.generate import VisionLanguageModel
    from sailflow.llava.vqascore import vqascore

    parts, runs = gpu_runs
    texts = ["a red square", "a blue circle", "a green square on a white background"]
    images = parts["image_files"][:3]
    gpu = VisionLanguageModel.from_run(runs["bf16"][1], device="cuda")
    cached = vqascore(gpu, images, texts).double().cpu()
    full = vqascore(gpu, images, texts, share="none").double().cpu()
    cpu = vqascore(VisionLanguageModel.from_run(runs["bf16"][1], device="cpu"), images, texts).double()
    assert cached.shape == (3, 3) and bool(((cached > 0) & (cached < 1)).all())
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cached, cpu, rtol=1e-3, atol=1e-5)
