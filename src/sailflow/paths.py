"""Where every artifact lives: the contract between the workflow's rules.

One function per artifact, used by the rules' outputs (called with wildcard patterns, e.g.
``align_head("{run}")``), by their input functions (called with names) and by the library (e.g. a
LLaVA run whose vision tower is a SAIL align run reads ``align_head(align_run)``). Paths are
relative to the workflow's working directory. Names in paths are config keys, never hub ids.
"""

from __future__ import annotations

RESULTS = "results"


# ---- data ----------------------------------------------------------------------------------------
def chunk_name(i: int) -> str:
    """Chunk i of a dataset: 0000, 0001, ... (the `{chunk}` wildcard: four digits)."""
    return f"{i:04d}"


def data_dir(dataset: str) -> str:
    return f"{RESULTS}/data/{dataset}"


def urls(dataset: str) -> str:
    """The normalised URL + caption table, one row per kept source row."""
    return f"{data_dir(dataset)}/urls.parquet"


def urls_report(dataset: str) -> str:
    return f"{data_dir(dataset)}/urls.json"


def chunk_file(dataset: str, chunk: str, name: str) -> str:
    """A chunk's ``urls.parquet``, ``download.json``, ``filtered.parquet``, ``filter.json`` or ``samples.parquet``."""
    return f"{data_dir(dataset)}/chunks/{chunk}/{name}"


def manifest(dataset: str) -> str:
    return f"{data_dir(dataset)}/manifest.json"


# ---- models and embeddings ---------------------------------------------------------------------
def tiny_model(backbone: str) -> str:
    """A tiny backbone built locally (tests, demo)."""
    return f"{RESULTS}/models/{backbone}"


def model_record(model: str) -> str:
    """The record of a hub model's fetch into the model cache."""
    return f"resources/models/{model}.json"


def image_embeddings(dataset: str, vision: str, chunk: str) -> str:
    return f"{RESULTS}/embeddings/{dataset}/image/{vision}/{chunk}.safetensors"


def text_embeddings(dataset: str, text: str, caption_source: str, chunk: str) -> str:
    return f"{RESULTS}/embeddings/{dataset}/text/{text}/{caption_source}/{chunk}.safetensors"


def embeddings_check(dataset: str, vision: str, text: str) -> str:
    return f"{RESULTS}/embeddings/{dataset}/{vision}__{text}.json"


# ---- alignment -----------------------------------------------------------------------------------
def align_dir(run: str) -> str:
    """``head.safetensors``, ``config.json``, ``train_log.jsonl`` and, while training, ``state/``."""
    return f"{RESULTS}/{run}/align"


def align_head(run: str) -> str:
    return f"{align_dir(run)}/head.safetensors"


def align_config(run: str) -> str:
    return f"{align_dir(run)}/config.json"


def probe(dataset: str, vision: str, text: str) -> str:
    return f"{RESULTS}/probe/{dataset}/{vision}__{text}.json"


# ---- evaluation and report -----------------------------------------------------------------------
def eval_image_features(task: str, vision: str) -> str:
    """Backbone features of a task's images, shared by every run with that vision backbone."""
    return f"{RESULTS}/eval/{task}/image/{vision}.safetensors"


def eval_text_features(task: str, text: str) -> str:
    return f"{RESULTS}/eval/{task}/text/{text}.safetensors"


def eval_result(run: str, task: str) -> str:
    return f"{RESULTS}/{run}/eval/{task}.json"


def eval_summary(run: str) -> str:
    return f"{RESULTS}/{run}/eval.json"


def report_file(run: str, name: str) -> str:
    """A report figure or table of a run (``loss.svg``, ``data.html``, ...)."""
    return f"{RESULTS}/{run}/report/{name}"


def report_metrics() -> str:
    return f"{RESULTS}/report/metrics.html"


# ---- LLaVA ---------------------------------------------------------------------------------------
def llava_dir(run: str, stage: str) -> str:
    """``pretrain`` (stage 1), ``finetune`` (stage 2) or ``hf`` (the transformers export) of a LLaVA run."""
    return f"{RESULTS}/{run}/llava/{stage}"


def llava_manifest(run: str, stage: str) -> str:
    """A stage's ``config.json``: written last, so its presence means the stage finished."""
    return f"{llava_dir(run, stage)}/config.json"


def llava_connector(run: str, stage: str) -> str:
    return f"{llava_dir(run, stage)}/connector.safetensors"


def llava_demo_instructions() -> str:
    """The demo's stage-2 instruction set (LLaVA JSON), generated from the shapes' ground truth."""
    return f"{RESULTS}/demo/llava/instruct.json"


def llava_answers(run: str, task: str) -> str:
    """LLaVA's answers JSONL of a run on one benchmark (question_id, prompt, text, ...)."""
    return f"{RESULTS}/{run}/llava_eval/{task}.answers.jsonl"


def llava_eval_result(run: str, task: str) -> str:
    return f"{RESULTS}/{run}/llava_eval/{task}.json"


def llava_eval_files(run: str, task: str) -> str:
    """Upload and prediction files of one benchmark (EvalAI, OpenCompass, the official scorers' inputs)."""
    return f"{RESULTS}/{run}/llava_eval/{task}"


def llava_eval_summary(run: str) -> str:
    return f"{RESULTS}/{run}/llava_eval.json"


def llava_demo_evalsets() -> str:
    """The demo's LLaVA benchmark sets (vqa/, pope/, mc/), in the real benchmarks' formats."""
    return f"{RESULTS}/demo/llava/evalsets"


def ocr_set(name: str) -> str:
    """An ``ocr_sets`` entry's records with their OCR regions (the ``ocr`` rule)."""
    return f"{RESULTS}/ocr/{name}.json"


# ---- CLIP from scratch (miniVLM's first stage) ---------------------------------------------------
def clip_dir(run: str) -> str:
    """A CLIP trained from scratch: ``open_clip_config.json``, ``open_clip_model.safetensors``,
    ``train_log.jsonl``, ``manifest.json`` (written last) and, while training, ``state/``. It loads as
    the open_clip model ``local-dir:<clip_dir>``."""
    return f"{RESULTS}/{run}/clip"


def clip_manifest(run: str) -> str:
    return f"{clip_dir(run)}/manifest.json"


def clip_model(run: str) -> str:
    return f"{clip_dir(run)}/open_clip_model.safetensors"


def clip_config(run: str) -> str:
    return f"{clip_dir(run)}/open_clip_config.json"


def clip_eval(run: str) -> str:
    """Zero-shot scores of a clip run's CLIP on its evaluation tasks, with chance levels."""
    return f"{RESULTS}/{run}/clip_eval.json"
