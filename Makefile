# Two set-up commands for a fresh machine (see README):
#   make demo   install into .venv and run the embedded demo
#   make test   install into .venv and run the tests (SAILFLOW_TEST_SLURM=install make test: also those
#               against a real Slurm, installed from Debian's packages as root; what .ci/run does)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision first, pinned: pip takes these two from the machine's wheel cache.
TORCH := torch==2.14.1 torchvision==0.29.1
CORES ?= 2

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]" $(TORCH)
	touch $@

install: $(VENV)/.installed

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --report results/report.html
	@echo "demo outputs: results/demo/eval.json (every metric; per task in results/demo/eval/),"
	@echo "  results/report.html (report: metrics with chance, data funnel, training curves, examples),"
	@echo "  results/data/shapes/manifest.json (data counts), results/demo/align/ (head, loss curve),"
	@echo "  results/llava_demo/llava/ (the chat model's two stages), results/llava_demo/llava_eval.json (its"
	@echo "  benchmarks: answers and upload files in results/llava_demo/llava_eval/). Ask it about a held-out shape:"
	@echo "  $(BIN)/python -m sailflow.chat results/llava_demo results/demo/shapes/images/eval/000000.png 'What colour is the shape?'"

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -n $(CORES) --dist loadscope --no-loadscope-reorder

lint: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake
