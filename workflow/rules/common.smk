# Config validation and the few functions that build paths and per-rule options.
import re
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

from snakemake.utils import validate

# The library's torch-free modules: planning never imports torch.
from sailflow import paths  # one path function per artifact, shared with the library
from sailflow.backbones.hub import needs_fetch, use_model_cache
from sailflow.config import ALIGN_RUNTIME_KEYS, PARALLELISM_KEYS, check_config, digest, export_source, without
from sailflow.evaluate.kinds import check_task, kind_of
from sailflow.llava.templates import SYSTEM_PROMPT_TEMPLATES

# Every error with its key path first (Snakemake's own message prints the whole schema), then
# Snakemake fills in the defaults.
check_config(config, Path(workflow.current_basedir) / "../schemas/config.schema.yaml")
validate(config, schema="../schemas/config.schema.yaml")

DATASETS = config["datasets"]


wildcard_constraints:
    dataset="|".join(DATASETS) or "(?!)",
    chunk=r"\d{4}",


def chunks_of(dataset):
    """Chunk names of a dataset: 0000, 0001, ... (n_chunks from config)."""
    return [paths.chunk_name(i) for i in range(DATASETS[dataset]["n_chunks"])]


def chunk_paths(dataset, name):
    """The per-chunk file `name` of every chunk of `dataset`."""
    return [paths.chunk_file(dataset, c, name) for c in chunks_of(dataset)]


def dataset_source(wildcards):
    """The dataset's source table; fetched from `source_url` when no local `source` is set."""
    ds = DATASETS[wildcards.dataset]
    if "source" in ds:
        return ds["source"]
    if "source_url" in ds:
        return f"resources/sources/{wildcards.dataset}/{PurePosixPath(ds['source_url']).name}"
    raise ValueError(f"datasets.{wildcards.dataset}: set `source` (a local table) or `source_url`")


def table_options(wildcards):
    ds = DATASETS[wildcards.dataset]
    fmt = ds["format"]
    return {
        "format": fmt,
        "url_column": ds.get("url_column"),  # None: the format's (sailflow.data.urls.normalize_table)
        "caption_sources": ds["caption_sources"],
        "allow_local_urls": ds["allow_local_urls"],
        "on_bad_row": ds["on_bad_row"],
    }


def caption_sources(dataset):
    """Caption-source names of a dataset (the schema allows a list, or a map name -> column)."""
    return list(DATASETS[dataset]["caption_sources"])


def section_options(section, dataset):
    """Global config section merged with the dataset's own overrides."""
    return {**config[section], **DATASETS[dataset].get(section, {})}


# The download's success-rate gate decides whether a job passes, not what it downloads: it goes to
# the rule's resources (see download_min_success_rate), so changing it reruns nothing that passed.
DOWNLOAD_GATE_KEYS = {"min_success_rate"}


def download_options(wildcards):
    opts = section_options("download", wildcards.dataset)
    return without(opts, PARALLELISM_KEYS | DOWNLOAD_GATE_KEYS)  # parallelism goes to threads/resources


def download_min_success_rate(wildcards):
    """As a string: Snakemake truncates float resources to int (0.5 would become 0)."""
    return str(section_options("download", wildcards.dataset)["min_success_rate"])


def image_limits(wildcards):
    opts = section_options("filter", wildcards.dataset)
    return without(opts, PARALLELISM_KEYS)


def download_limits(wildcards):
    """Size limits img2dataset applies itself: only when it resizes (otherwise the filter does)."""
    if download_options(wildcards)["resize_mode"] == "no":
        return {}
    return image_limits(wildcards)


def download_processes(wildcards):
    return section_options("download", wildcards.dataset)["processes"]


def download_threads_per_process(wildcards):
    return section_options("download", wildcards.dataset)["threads"]


def filter_processes(wildcards):
    return section_options("filter", wildcards.dataset)["processes"]


def source_url(wildcards):
    return DATASETS[wildcards.dataset]["source_url"]


# ---- backbones and embeddings ---------------------------------------------------------------

BACKBONES = config["backbones"]
VISION = [n for n, b in BACKBONES.items() if b["kind"] == "vision"]
TEXT = [n for n, b in BACKBONES.items() if b["kind"] == "text"]
CAPTION_SOURCES = sorted({c for d in DATASETS for c in caption_sources(d)})


# Hub models are fetched by the fetch_model rule (a local rule) into hub.hf_home; every other job
# loads them with the hub offline (compute nodes of a cluster usually have no internet).
use_model_cache(config["hub"]["hf_home"], offline=True)
export_source(workflow.basedir)  # for the conda env's post-deploy install (envs/sailflow.post-deploy.sh)
HUB_MODELS = [n for n, b in BACKBONES.items() if needs_fetch(b)]


wildcard_constraints:
    model="|".join(map(re.escape, HUB_MODELS)) or "(?!)",
    vision="|".join(VISION) or "(?!)",
    text="|".join(TEXT) or "(?!)",
    caption_source="|".join(CAPTION_SOURCES) or "(?!)",
    backbone="|".join(n for n, b in BACKBONES.items() if "build" in b) or "(?!)",


def tiny_kind(wildcards):
    return BACKBONES[wildcards.backbone]["build"]


def backbone_entry(name):
    """A backbone's config entry without its batch size (which does not change the embeddings)."""
    return {k: v for k, v in BACKBONES[name].items() if k != "batch_size"}


def backbone_spec(kind):
    """params: the backbone's config entry, so that editing it re-encodes."""

    def spec(wildcards):
        return backbone_entry(getattr(wildcards, kind))

    return spec


def backbone_files(name):
    """What a job loading backbone `name` needs first: a locally built (tiny) model's folder, the record
    of a hub model's fetch (fetch_model), or the manifest of the clip run whose CLIP it is (`local-dir:`
    its results/{run}/clip); packaged and other local models need nothing."""
    b = BACKBONES[name]
    if "build" in b:
        return [b["path"]]
    run = clip_run_of(b)
    if run is not None:
        return [paths.clip_manifest(run)]
    return [paths.model_record(name)] if needs_fetch(b) else []


def backbone_model_input(kind):
    """backbone_files of the job's backbone (wildcard `vision` or `text`)."""

    def inputs(wildcards):
        return backbone_files(getattr(wildcards, kind))

    return inputs


def encode_batch_size(kind):
    def size(wildcards):
        b = BACKBONES[getattr(wildcards, kind)]
        return b.get("batch_size", config["encode"][f"{'image' if kind == 'vision' else 'text'}_batch_size"])

    return size


def image_embedding_paths(dataset, vision):
    return [paths.image_embeddings(dataset, vision, c) for c in chunks_of(dataset)]


def text_embedding_paths(dataset, text, sources=None):
    return [paths.text_embeddings(dataset, text, s, c) for s in (sources or caption_sources(dataset)) for c in chunks_of(dataset)]


# ---- runs (alignment and later stages) --------------------------------------------------------

RUNS = config["runs"]
LLAVA_RUNS = config["llava_runs"]
CLIP_RUNS = config["clip_runs"]  # CLIPs trained from scratch (the clip section below)
OCR_SETS = config["ocr_sets"]  # LLaVA records given OCR regions by the ocr rule
LLMS = config["llms"]


wildcard_constraints:
    run="|".join(map(re.escape, dict.fromkeys([*RUNS, *LLAVA_RUNS, *CLIP_RUNS]))) or "(?!)",


def _check_run(name):
    r = RUNS[name]
    for key, kind in (("vision", "vision"), ("text", "text")):
        if BACKBONES.get(r[key], {}).get("kind") != kind:
            raise ValueError(f"runs.{name}.{key}: {r[key]!r} is not a {kind} backbone under `backbones:`")
    extras = {"extra_caption_source" in d for d in r["data"]}
    if len(extras) > 1:
        raise ValueError(f"runs.{name}.data: give extra_caption_source for every dataset or for none")
    for d in r["data"]:
        if d["dataset"] not in DATASETS:
            raise ValueError(f"runs.{name}.data: unknown dataset {d['dataset']!r}")
        for key in ("caption_source", "extra_caption_source"):
            if key in d and d[key] not in caption_sources(d["dataset"]):
                raise ValueError(f"runs.{name}.data: {d[key]!r} is not a caption source of dataset {d['dataset']!r}")


for _run in RUNS:
    _check_run(_run)


def align_all_settings(run):
    return {**config["align"], **RUNS[run].get("align", {})}


def align_settings(wildcards):
    """params: the settings that decide the trained head (not logging/checkpoint intervals)."""
    return without(align_all_settings(wildcards.run), ALIGN_RUNTIME_KEYS)


def align_runtime(key):
    def value(wildcards):
        return align_all_settings(wildcards.run)[key]

    return value


def run_inputs(wildcards):
    """Chunk files of every dataset of the run, in the same order for each modality."""
    r = RUNS[wildcards.run]
    image, text, extra, samples = [], [], [], []
    for d in r["data"]:
        ds = d["dataset"]
        image += image_embedding_paths(ds, r["vision"])
        text += text_embedding_paths(ds, r["text"], [d["caption_source"]])
        if "extra_caption_source" in d:
            extra += text_embedding_paths(ds, r["text"], [d["extra_caption_source"]])
        samples += chunk_paths(ds, "samples.parquet")
    return {"image": image, "text": text, "extra": extra, "samples": samples}


def run_gpus(wildcards):
    return RUNS[wildcards.run]["gpus"]


def run_meta(wildcards):
    r = RUNS[wildcards.run]
    return {
        "run": wildcards.run,
        "vision": r["vision"],
        "text": r["text"],
        "data": r["data"],
        "vision_backbone": backbone_entry(r["vision"]),
        "text_backbone": backbone_entry(r["text"]),
    }


def probe_settings(wildcards):
    s = {**config["align"], **config["probe"]["align"], **DATASETS[wildcards.dataset].get("probe_align", {})}
    return without(s, ALIGN_RUNTIME_KEYS)


def probe_inputs(wildcards):
    ds = wildcards.dataset
    return {
        "image": image_embedding_paths(ds, wildcards.vision),
        "text": text_embedding_paths(ds, wildcards.text, [config["probe"]["caption_source"]]),
        "samples": chunk_paths(ds, "samples.parquet"),
    }


def probe_meta(wildcards):
    return {
        "dataset": wildcards.dataset,
        "vision": wildcards.vision,
        "text": wildcards.text,
        "caption_source": config["probe"]["caption_source"],
    }


# ---- evaluation ---------------------------------------------------------------------------------

EVAL_TASKS = config["eval_tasks"]


wildcard_constraints:
    task="|".join(EVAL_TASKS) or "(?!)",


def _check_eval(run):
    for task in RUNS[run]["eval"]:
        if task not in EVAL_TASKS:
            raise ValueError(f"runs.{run}.eval: unknown task {task!r}; define it under `eval_tasks:`")


for _run in RUNS:
    _check_eval(_run)
for _task, _spec in EVAL_TASKS.items():  # each kind checks its own keys (the schema knows only `kind`)
    check_task(_spec, _task)


_WARNED_MISSING = set()  # external evaluation data reported missing (once per path)


def eval_data_inputs(wildcards):
    """Inputs of jobs that read a task's data. Data under results/ is made by this workflow (the
    demo sets) and always an input; data elsewhere (ImageNet, COCO, ...) is read where it lies: an
    input when present, otherwise reported now, when the job is planned, and an error when it runs."""
    spec = EVAL_TASKS[wildcards.task]
    files = []
    for p in kind_of(spec).files(spec):
        if p.startswith(f"{paths.RESULTS}/") or Path(p).exists():
            files.append(p)
        elif p not in _WARNED_MISSING:
            _WARNED_MISSING.add(p)
            logger.warning(f"eval_tasks.{wildcards.task}: {p} does not exist (yet); its evaluation jobs will fail until it does")
    return files


def eval_task_spec(wildcards):
    return EVAL_TASKS[wildcards.task]


def eval_task_image_spec(wildcards):
    """params of image features: the task without its text-only keys, so a new prompt set
    re-encodes prompts, not images."""
    spec = EVAL_TASKS[wildcards.task]
    return {k: v for k, v in spec.items() if k not in kind_of(spec).text_only_keys}


def eval_features(wildcards):
    r = RUNS[wildcards.run]
    return {
        "image": paths.eval_image_features(wildcards.task, r["vision"]),
        "text": paths.eval_text_features(wildcards.task, r["text"]),
    }


def eval_settings(wildcards):
    """params of scoring beyond the task itself: the `eval:` values its kind reads (retrieval: R@k and
    examples for the report)."""
    return {k: config["eval"][k] for k in kind_of(EVAL_TASKS[wildcards.task]).settings}


def run_eval_results(wildcards):
    return [paths.eval_result(wildcards.run, t) for t in RUNS[wildcards.run]["eval"]]


def run_manifests(wildcards):
    return [paths.manifest(d["dataset"]) for d in RUNS[wildcards.run]["data"]]


def dataset_settings(dataset):
    """What decides a dataset's samples: its table, download and filter options (not parallelism)."""
    w = SimpleNamespace(dataset=dataset)
    return {
        "source": DATASETS[dataset].get("source") or DATASETS[dataset].get("source_url"),
        "table": table_options(w),
        "download": download_options(w),
        "filter": image_limits(w),
        "n_chunks": DATASETS[dataset]["n_chunks"],
    }


def run_fingerprint(wildcards):
    """Everything that decides a run's numbers: backbones, data, alignment settings, tasks."""
    r = RUNS[wildcards.run]
    cfg = {
        **run_meta(wildcards),
        "align": align_settings(wildcards),
        "eval": {t: EVAL_TASKS[t] for t in r["eval"]},
        "eval_settings": config["eval"],
        "datasets": {d["dataset"]: dataset_settings(d["dataset"]) for d in r["data"]},
    }
    return digest(cfg)


def report_targets():
    """What `snakemake --report` shows, for the runs listed under `report: runs:`."""
    llava = [r for r in config["report"]["runs"] if r in LLAVA_RUNS]
    runs = [r for r in config["report"]["runs"] if r not in LLAVA_RUNS]
    for run in runs:
        if run not in RUNS:
            raise ValueError(f"report.runs: unknown run {run!r} (neither under runs: nor under llava_runs:)")
    per_kind = {
        "zeroshot": ["confusion_{}.svg"],
        "retrieval": ["retrieval_{}.png", "misses_{}.png"],
        "winoground": ["pairs_{}.png"],
        "mmvp": ["pairs_{}.png"],
    }  # rules in report.smk
    llava_scored = [r for r in llava if LLAVA_RUNS[r]["eval"]]
    out = [paths.report_metrics()] if runs or llava_scored else []
    for run in runs:
        out += [paths.report_file(run, name) for name in ("summary.html", "training.svg", "data.html")]
        out += [
            paths.report_file(run, name.format(t)) for t in RUNS[run]["eval"] for name in per_kind.get(EVAL_TASKS[t]["kind"], [])
        ]
    out += [paths.report_file(run, "llava_training.svg") for run in llava]  # LLaVA runs: their two stages' curves
    out += [paths.report_file(run, "llava_examples.png") for run in llava_scored]  # ... and benchmark answers beside gold
    return out


# ---- LLaVA runs ------------------------------------------------------------------------------------

LLAVA_STAGES = ("pretrain", "finetune")


wildcard_constraints:
    llm="|".join(map(re.escape, [n for n, m in LLMS.items() if "build" in m])) or "(?!)",


def _check_llava(name):
    r = LLAVA_RUNS[name]
    if name in RUNS:
        raise ValueError(f"llava_runs.{name}: the name is taken by runs.{name} (both write results/{name}/)")
    if r["llm"] not in LLMS:
        raise ValueError(f"llava_runs.{name}.llm: {r['llm']!r} is not under `llms:`")
    t = r["tower"]
    if "align_run" in t and t["align_run"] not in RUNS:
        raise ValueError(f"llava_runs.{name}.tower.align_run: {t['align_run']!r} is not a run under `runs:`")
    if "backbone" in t and BACKBONES.get(t["backbone"], {}).get("kind") != "vision":
        raise ValueError(f"llava_runs.{name}.tower.backbone: {t['backbone']!r} is not a vision backbone under `backbones:`")
    for stage in LLAVA_STAGES:
        if not r[stage].get("data"):
            raise ValueError(
                f"llava_runs.{name}.{stage}.data: give the stage's data ({{json, images}} or {{dataset, caption_source}})"
            )
        for d in r[stage]["data"]:
            if "dataset" in d and (d["dataset"] not in DATASETS or d["caption_source"] not in caption_sources(d["dataset"])):
                raise ValueError(f"llava_runs.{name}.{stage}.data: {d} names an unknown dataset or caption source")
        s, world = llava_settings(name, stage), max(1, r["gpus"])
        if s.get("system_prompt") is not None and s["template"] not in SYSTEM_PROMPT_TEMPLATES:
            raise ValueError(
                f"llava_runs.{name}.{stage}.system_prompt: template {s['template']!r} has no system prompt to set "
                f"(templates with one: {SYSTEM_PROMPT_TEMPLATES})"
            )
        if s["global_batch_size"] % (s["per_device_batch_size"] * world):
            raise ValueError(
                f"llava_runs.{name}.{stage}: global_batch_size {s['global_batch_size']} is not a multiple of "
                f"per_device_batch_size {s['per_device_batch_size']} x {world} GPUs (gpus): the stage would stop at start"
            )


def llava_settings(run, stage):
    """The stage's settings: the `llava:` defaults with the run's overrides (data is listed apart)."""
    s = {**config["llava"][stage], **LLAVA_RUNS[run][stage]}
    s.pop("data", None)
    if "remgcl" in s and s["remgcl"] is None:
        del s["remgcl"]  # off: the stage's params (its rerun trigger, its fingerprint) stay as before remgcl existed
    return s


for _run in LLAVA_RUNS:
    _check_llava(_run)


def llava_tower(run):
    """The tower spec sailflow.llava.towers.load_tower takes: a SAIL align run or a backbone's tokens."""
    t = LLAVA_RUNS[run]["tower"]
    if "align_run" in t:
        vision = RUNS[t["align_run"]]["vision"]
        return _with_pool(
            {
                "kind": "sail",
                "name": vision,
                "backbone": backbone_entry(vision),
                "align_dir": paths.align_dir(t["align_run"]),
                "align_run": t["align_run"],
            },
            t,
        )
    b = backbone_entry(t["backbone"])
    spec = {"kind": b["family"], "name": t["backbone"], "backbone": b}
    if b["family"] in ("clip", "open_clip"):
        spec["layer"] = t.get("layer", -2)
    elif "layer" in t:  # dinov2: a block's output instead of the final normed one (exportable to transformers' Llava)
        spec["layer"] = t["layer"]
    return _with_pool(spec, t)


def _with_pool(spec, t):
    """`pool` is in the spec only when set: the params (rerun trigger, fingerprint) of a run without it stay as before."""
    return {**spec, "pool": t["pool"]} if "pool" in t else spec


def llava_connector(run):
    c = LLAVA_RUNS[run]["connector"]
    return {"kind": c} if isinstance(c, str) else dict(c)


def default_images(json_path):
    """Where a record file's images are when its data entry does not say: an ocr set's own images for its
    output (results/ocr/{name}.json), else the file's folder."""
    name = next((n for n in OCR_SETS if PurePosixPath(paths.ocr_set(n)) == PurePosixPath(json_path)), None)
    return OCR_SETS[name]["images"] if name else str(Path(json_path).parent)


def llava_data(run, stage):
    """The stage's data for the trainer: LLaVA JSON files, or a dataset's chunk tables and tars."""
    out = []
    for d in LLAVA_RUNS[run][stage]["data"]:
        if "json" in d:
            out.append({"json": d["json"], "images": d.get("images", default_images(d["json"]))})
        else:
            ds = d["dataset"]
            out.append(
                {
                    "dataset": ds,
                    "caption_source": d["caption_source"],
                    "samples": chunk_paths(ds, "samples.parquet"),
                    "images_dirs": [str(Path(p).parent / "images") for p in chunk_paths(ds, "samples.parquet")],
                }
            )
    return out


def llava_args(stage):
    """params: everything that decides the stage's weights (not logging or checkpoint intervals)."""

    def args(wildcards):
        r = LLAVA_RUNS[wildcards.run]
        s = llava_settings(wildcards.run, stage)
        s.pop("dataloader_workers")  # a resource: the batches are the same for any number of loader processes
        llm = {"name": r["llm"], **LLMS[r["llm"]]}
        return {
            "stage": stage,
            "tower": llava_tower(wildcards.run),
            "image_aspect_ratio": s.pop("image_aspect_ratio"),
            "connector": llava_connector(wildcards.run),
            "llm": llm,
            "template": s.pop("template"),
            "data": llava_data(wildcards.run, stage),
            "on_bad_record": r["on_bad_record"],
            "settings": s,
            "previous": paths.llava_dir(wildcards.run, "pretrain") if stage == "finetune" else None,
        }

    return args


def llava_inputs(stage):
    def inputs(wildcards):
        r = LLAVA_RUNS[wildcards.run]
        t = r["tower"]
        out = {"data": [], "llm": [], "tower": []}
        for d in r[stage]["data"]:
            out["data"] += [d["json"]] if "json" in d else chunk_paths(d["dataset"], "samples.parquet")
        m = LLMS[r["llm"]]
        out["llm"] = [m["path"]] if "build" in m else []
        if "align_run" in t:
            out["tower"] = [paths.align_head(t["align_run"]), paths.align_config(t["align_run"])]
            vision = RUNS[t["align_run"]]["vision"]
        else:
            vision = t["backbone"]
        out["tower"] += backbone_files(vision)
        if stage == "finetune":
            out["previous"] = [paths.llava_manifest(wildcards.run, "pretrain"), paths.llava_connector(wildcards.run, "pretrain")]
        return out

    return inputs


def llava_gpus(wildcards):
    return LLAVA_RUNS[wildcards.run]["gpus"]


def llava_threads(wildcards):
    return LLAVA_RUNS[wildcards.run]["threads"]


def llava_workers(stage):
    def value(wildcards):
        return llava_settings(wildcards.run, stage)["dataloader_workers"]

    return value


def llava_runtime(key):
    def value(wildcards):
        return config["llava"][key]

    return value


def llava_exportable(run):
    from sailflow.llava.export import exportable  # torch-free check of the parts

    r, tower, finetune = LLAVA_RUNS[run], llava_tower(run), llava_settings(run, "finetune")
    if finetune["template"].startswith("t5_"):
        return False  # an encoder-decoder (Flan-T5) has no LlavaForConditionalGeneration to export to
    return r["export"] and exportable(
        tower["kind"], llava_connector(run)["kind"], bool(finetune.get("lora")), tower.get("layer"), tower.get("pool")
    )


def llava_targets(run):
    out = [paths.llava_manifest(run, "finetune")]
    if llava_exportable(run):
        out.append(paths.llava_manifest(run, "hf"))
    return out


def tiny_llm_texts(llm):
    """A tiny LLM's tokenizer (and, for demo_llama, its pre-training) learns from the demo's texts."""
    return ["results/demo/shapes/train.csv", paths.llava_demo_instructions()]


# ---- LLaVA evaluation ------------------------------------------------------------------------------

LLAVA_EVAL_TASKS = config["llava_eval_tasks"]


def _check_llava_eval():
    from sailflow.llava import benchmarks, vqascore  # torch-free

    for name, spec in LLAVA_EVAL_TASKS.items():
        if spec["kind"] == "vqascore":
            vqascore.check_spec(spec, name, config["eval_tasks"])
        else:
            benchmarks.check_spec(spec, name)
    for run, r in LLAVA_RUNS.items():
        for task in r["eval"]:
            if task not in LLAVA_EVAL_TASKS:
                raise ValueError(f"llava_runs.{run}.eval: {task!r} is not under llava_eval_tasks:")


_check_llava_eval()


wildcard_constraints:
    llava_task="|".join(map(re.escape, LLAVA_EVAL_TASKS)) or "(?!)",


# Benchmarks answered by generation (then scored from their answers) and VQAScore tasks (scored by the model).
GENERATED_TASKS = "|".join(re.escape(t) for t, s in LLAVA_EVAL_TASKS.items() if s["kind"] != "vqascore") or "(?!)"
VQASCORE_TASKS = "|".join(re.escape(t) for t, s in LLAVA_EVAL_TASKS.items() if s["kind"] == "vqascore") or "(?!)"


def llava_eval_spec(wildcards):
    """params: the benchmark's entry, with its prompt settings (suffix, max_new_tokens) filled in."""
    from sailflow.llava import benchmarks

    spec = LLAVA_EVAL_TASKS[wildcards.llava_task]
    return spec if spec["kind"] == "vqascore" else {**spec, **benchmarks.prompt_settings(spec)}


def llava_generation_spec(wildcards):
    from sailflow.llava import benchmarks

    return benchmarks.generation_spec(LLAVA_EVAL_TASKS[wildcards.llava_task])


def llava_generation_files(wildcards):
    from sailflow.llava import benchmarks

    return benchmarks.generation_files(LLAVA_EVAL_TASKS[wildcards.llava_task])


def llava_eval_files(wildcards):
    from sailflow.llava import benchmarks, vqascore

    spec = LLAVA_EVAL_TASKS[wildcards.llava_task]
    if spec["kind"] == "vqascore":
        return vqascore.spec_files(spec, config["eval_tasks"])
    return benchmarks.spec_files(spec)


def llava_eval_refs(wildcards):
    """params: the eval_tasks entry a vqascore task scores (only that one: editing others reruns nothing)."""
    spec = LLAVA_EVAL_TASKS[wildcards.llava_task]
    return {spec["task"]: config["eval_tasks"][spec["task"]]} if "task" in spec else {}


def llava_model_inputs(wildcards):
    """The stage a benchmark scores (stage 2): retraining it reruns every generation and score."""
    return [paths.llava_manifest(wildcards.run, "finetune"), paths.llava_connector(wildcards.run, "finetune")]


def llava_eval_results(wildcards):
    return [paths.llava_eval_result(wildcards.run, t) for t in LLAVA_RUNS[wildcards.run]["eval"]]


# ---- CLIP from scratch (miniVLM's first stage) ------------------------------------------------------

# CLIP_RUNS is defined with RUNS above (the `run` wildcard covers it); a clip run may share its name with a
# LLaVA run: results/{run}/clip/ and clip_eval.json sit beside results/{run}/llava/.
CLIP_RUN_NAMES = "|".join(map(re.escape, CLIP_RUNS)) or "(?!)"
CLIP_JOB_KEYS = {"datasets", "gpus", "eval"}  # what the job reads and where it runs, not how the CLIP trains
CLIP_RUNTIME_KEYS = frozenset({"log_every", "checkpoint_every"})  # intervals: resources, never a rerun


def clip_run_of(backbone):
    """The clip run whose CLIP a backbone entry loads (path `local-dir:results/{run}/clip`), else None."""
    path = backbone["path"]
    if not path.startswith("local-dir:"):
        return None
    folder = PurePosixPath(path.removeprefix("local-dir:"))
    return next((run for run in CLIP_RUNS if folder == PurePosixPath(paths.clip_dir(run))), None)


def _check_clip_run(name):
    r = CLIP_RUNS[name]
    for ds in r["datasets"]:
        if ds not in DATASETS:
            raise ValueError(f"clip_runs.{name}.datasets: unknown dataset {ds!r}; define it under `datasets:`")
        if r["caption_source"] not in caption_sources(ds):
            raise ValueError(
                f"clip_runs.{name}.caption_source: {r['caption_source']!r} is not a caption source of dataset {ds!r} "
                f"(it has {caption_sources(ds)})"
            )
    for task in r["eval"]:
        if task not in EVAL_TASKS:
            raise ValueError(f"clip_runs.{name}.eval: unknown task {task!r}; define it under `eval_tasks:`")
        kind = kind_of(EVAL_TASKS[task])
        if not set(kind.needs) <= {"encode_image", "encode_text"}:
            raise ValueError(
                f"clip_runs.{name}.eval: {task!r} is a {kind.name} task, which needs {list(kind.needs)}; a CLIP "
                "is scored on contrastive tasks (zeroshot, retrieval, winoground, mmvp)"
            )


for _run in CLIP_RUNS:
    _check_clip_run(_run)
for _name, _b in BACKBONES.items():  # a CLIP under results/ comes from a clip run, which the jobs loading it wait for
    if _b["path"].startswith(f"local-dir:{paths.RESULTS}/") and clip_run_of(_b) is None:
        raise ValueError(
            f"backbones.{_name}.path: {_b['path']!r} is under {paths.RESULTS}/ but is not the CLIP of a clip run; "
            f"write local-dir:{paths.clip_dir('<run>')} with <run> one of clip_runs: {sorted(CLIP_RUNS)}"
        )


def clip_settings(wildcards):
    """params: everything that decides the CLIP (model, caption source, optimisation, seed)."""
    return without(CLIP_RUNS[wildcards.run], CLIP_JOB_KEYS | CLIP_RUNTIME_KEYS | PARALLELISM_KEYS)


def clip_inputs(wildcards):
    """Every chunk's samples.parquet of the run's datasets (their tars sit in images/ beside each)."""
    return {"samples": [p for ds in CLIP_RUNS[wildcards.run]["datasets"] for p in chunk_paths(ds, "samples.parquet")]}


def clip_meta(wildcards):
    return {"datasets": CLIP_RUNS[wildcards.run]["datasets"]}


def clip_gpus(wildcards):
    return CLIP_RUNS[wildcards.run]["gpus"]


def clip_threads(wildcards):
    return CLIP_RUNS[wildcards.run]["threads"]


def clip_runtime(key):
    def value(wildcards):
        return CLIP_RUNS[wildcards.run][key]

    return value


def clip_eval_data(wildcards):
    """The data files of the run's evaluation tasks (see eval_data_inputs)."""
    return [f for t in CLIP_RUNS[wildcards.run]["eval"] for f in eval_data_inputs(SimpleNamespace(task=t))]


def clip_eval_tasks(wildcards):
    """params: each evaluation task of the run with the `eval:` values its kind reads."""
    return {
        t: {"spec": EVAL_TASKS[t], "settings": eval_settings(SimpleNamespace(task=t))} for t in CLIP_RUNS[wildcards.run]["eval"]
    }
