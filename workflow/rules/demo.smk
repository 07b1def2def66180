# The embedded demo dataset: generated locally, then "downloaded" through img2dataset from
# file:// URLs like any web dataset.


rule demo_shapes:
    output:
        train="results/demo/shapes/train.csv",
        heldout="results/demo/shapes/eval.csv",
    params:
        cfg=config["demo"],
    log:
        "logs/demo/shapes.log",
    conda:
        "../../envs/sailflow.yaml"
    script:
        "../scripts/demo_shapes.py"
