#!/usr/bin/env bash
# Runs once, inside the freshly created conda env (Snakemake's post-deploy hook). The workflow exports
# SAILFLOW_SOURCE (the checkout holding pyproject.toml) to every process it starts.
set -euo pipefail
: "${SAILFLOW_SOURCE:?SAILFLOW_SOURCE is not set: run this env through the workflow (snakemake --sdm conda)}"
python -m pip install -e "${SAILFLOW_SOURCE}"
