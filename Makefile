# The README's commands. Each sets up everything it needs on a fresh machine (.ci/env.sh builds or
# reuses the pinned dependency environment outside the clone, and this checkout's own .venv/ on top of it).
SHELL := /bin/bash
export TIEDLAB_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= disabled

.PHONY: help demo quick test test-slow bench report

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12


demo:  ## the demo study: all four paradigms on real data, a few runs each -> reports/studies/demo/
	@source .ci/env.sh && tiedlab-study demo

quick:  ## the primary comparisons at CPU sizes, 4-8 seeds, within 90 min on a 2-core CPU -> reports/studies/quick/
	@source .ci/env.sh && tiedlab-study quick --jobs 2 --until-decided --max-seeds 8 --seed-step 2 --budget-min 90

test:  ## the fast CPU test suite (what CI runs)
	@source .ci/env.sh && python -m pytest -q -n auto --maxprocesses=4

test-slow:  ## long runs on real data (accuracy targets)
	@source .ci/env.sh && python -m pytest -q -m slow

bench:  ## core speed and memory benchmark (prints ratios to tied)
	@source .ci/env.sh && python benchmarks/bench_core.py

report:  ## rebuild a study's report from its runs: make report STUDY=quick (runs/study/STUDY -> reports/studies/STUDY/)
	@source .ci/env.sh && tiedlab-report runs/study/$(or $(STUDY),demo) --out reports/studies/$(or $(STUDY),demo) \
		--title "study $(or $(STUDY),demo)" --command "tiedlab-study $(or $(STUDY),demo)"
