# sailflow: image URLs + captions -> downloaded, filtered shards -> (later) embeddings, aligned
# models and evaluations. The rules of each stage live in workflow/rules/; the library they call
# is src/sailflow. `snakemake --cores 2` runs the embedded demo.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/align.smk"


rule all:
    input:
        config["default_targets"],
    default_target: True
