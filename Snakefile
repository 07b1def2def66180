# sailflow: image URLs + captions -> downloaded, filtered shards -> embeddings from frozen backbones
# -> a trained SAIL alignment head -> evaluations and a report. The rules of each stage live in
# workflow/rules/; the library they call is src/sailflow. `snakemake --cores 2` runs the embedded
# demo; `snakemake --report results/report.html` then writes its report.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/clip.smk"
include: "workflow/rules/llava.smk"
include: "workflow/rules/llava_eval.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        config["default_targets"],
        report_targets(),
