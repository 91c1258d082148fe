"""Shared test set-up: offline, deterministic, no writes outside tmp dirs."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# Under pytest-xdist (`-n auto --maxprocesses=4`, the Makefile's test target) each worker gets its share of the
# cores, so that the workers do not oversubscribe them; run alone, the suite uses up to 2 threads.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _workers)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
