"""Open every embedding chunk of a (dataset, vision, text) memory-mapped and check that all
modalities line up with samples.parquet; write a summary."""

from sailflow.embeddings import open_chunks
from sailflow.io import write_json
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    n = len(smk.input.samples)
    sources = smk.params.caption_sources
    text = list(smk.input.text)
    by_label = {f"image/{smk.wildcards.vision}": list(smk.input.image)}
    for i, s in enumerate(sources):
        by_label[f"text/{smk.wildcards.text}/{s}"] = text[i * n : (i + 1) * n]
    opened = open_chunks(by_label, samples=list(smk.input.samples))
    summary = {
        label: {
            "rows": sum(f.count for f in files),
            "shape": list(files[0].embeddings.shape[1:]),
            "dtype": files[0].meta["dtype"],
            "fingerprint": files[0].meta["fingerprint"],
        }
        for label, files in opened.items()
    }
    write_json(smk.output[0], {"dataset": smk.wildcards.dataset, "chunks": n, "aligned": True, "modalities": summary})
    print(summary)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
