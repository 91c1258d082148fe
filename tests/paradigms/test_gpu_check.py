"""benchmarks/gpu_check.py works the first time it meets a GPU: the same code path at toy sizes on CPU, and
its paper-size configs compose and validate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tiedlab.paradigms.config import validate
from tiedlab.paradigms.engine import as_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_on_cpu_measures_every_field(gpu_check, tmp_path):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--steps", "2", "--only", "vision,graph",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and [r["paradigm"] for r in result["paradigms"]] == ["vision", "graph"]
    for row in result["paradigms"]:
        assert row["status"] == "completed" and row["samples_per_s"] > 0 and row["step_ms"] > 0 and row["peak_mb"] > 0
    vision = result["paradigms"][0]
    assert vision["step_gflops"] > 0 and vision["mfu"] is None  # no known peak on a CPU
    layout = result["vision_channels_last"]
    assert layout["status"] == "completed" and layout["speedup"] > 0
    assert set(result["time_to_accuracy"]) == {"target_val_acc", "reached_at_step", "train_s", "final_val_acc"}
    (batching,) = result["seed_batching"]  # vision (graph cannot batch its seeds)
    assert batching["k"] == 2 and batching["speedup"] > 0


@pytest.mark.parametrize("name", ["vision", "ssl", "graph", "language"])
def test_paper_sizes_compose_and_validate(gpu_check, name, tmp_path):
    cfg = gpu_check.compose([*gpu_check.SIZES[name]["paper"], "train.max_steps=60", f"run_dir={tmp_path}"])
    validate(as_config(cfg))
