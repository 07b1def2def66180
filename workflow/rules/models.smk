# Models: tiny backbones built locally (tests, demo), and hub backbones fetched into the model cache
# before any compute job loads them (compute jobs run with the hub offline).


rule build_tiny_backbone:
    output:
        directory(paths.tiny_model("{backbone}")),
    log:
        "logs/models/{backbone}.log",
    localrule: True  # a tiny random model saved in seconds
    conda:
        "../../envs/sailflow.yaml"
    params:
        kind=tiny_kind,
    script:
        "../scripts/build_tiny_backbone.py"


rule fetch_model:
    output:
        paths.model_record("{model}"),
    log:
        "logs/models/fetch_{model}.log",
    localrule: True  # where Snakemake runs (the login node): compute nodes often have no internet
    conda:
        "../../envs/sailflow.yaml"
    params:
        backbone=lambda w: backbone_entry(w.model),
    script:
        "../scripts/fetch_model.py"
