# The two commands of the README. Both set up everything they need on a fresh machine.
SHELL := /bin/bash
export TIEDLAB_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= disabled

.PHONY: test test-slow demo bench

test:  ## the fast CPU test suite (what CI runs)
	@source .ci/env.sh && python -m pytest -q

test-slow:  ## long runs on real data (accuracy targets)
	@source .ci/env.sh && python -m pytest -q -m slow

bench:  ## core speed and memory benchmark (prints ratios to tied)
	@source .ci/env.sh && python benchmarks/bench_core.py
