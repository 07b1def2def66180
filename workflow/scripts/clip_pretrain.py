"""Train a run's CLIP from scratch (miniVLM's first stage): in this process, or under torchrun on several GPUs."""

from pathlib import Path

from sailflow.clip_pretrain import train
from sailflow.gpu import launch
from sailflow.logs import log_to


def main(smk):
    log = log_to(smk.log[0])
    out_dir = Path(smk.output.manifest).parent
    samples = [str(p) for p in smk.input.samples]
    gpus = int(smk.resources.gpu)
    # the artifact contract: a chunk's tars sit in images/ beside its samples.parquet
    images_dirs = [str(Path(p).parent / "images") for p in samples]
    # loader processes per training process; the training process itself keeps one thread
    workers = max(0, int(smk.threads) // max(1, gpus) - 1)
    args = {
        "samples": samples, "images_dirs": images_dirs, "out_dir": str(out_dir),
        "settings": {**smk.params.settings, "log_every": int(smk.resources.log_every),
                     "checkpoint_every": int(smk.resources.checkpoint_every), "workers": workers},
        "meta": {"run": smk.wildcards.run, **dict(smk.params.meta)},
    }
    launch("sailflow.clip_pretrain", args, gpus, out_dir / "train_args.json", log, in_process=train)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
