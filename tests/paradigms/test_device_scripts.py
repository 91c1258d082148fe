"""benchmarks/device/*.sh run once per lent GPU, with no second try: each parses, and each refuses with one line
(exit 2) where prepare.sh has not put the wheels they install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEVICE = Path(__file__).resolve().parents[2] / "benchmarks" / "device"
SCRIPTS = sorted(p.name for p in DEVICE.glob("*.sh"))  # setup.sh: sourced by the three run there


def test_the_scripts_are_there():
    assert {"prepare.sh", "setup.sh", "check.sh", "concurrency.sh", "anchor.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_parses(name):
    done = subprocess.run(["bash", "-n", str(DEVICE / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["check.sh", "concurrency.sh", "anchor.sh"])
def test_without_the_carried_wheels_a_script_says_so_in_one_line(name, tmp_path):
    shutil.copytree(DEVICE, tmp_path / "benchmarks" / "device")  # a checkout without .device/
    copy = tmp_path / "benchmarks" / "device" / name
    done = subprocess.run(["bash", str(copy)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin",
                                                                                    "OUT": str(tmp_path / "out")})
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"{name}: no .device/whl: run benchmarks/device/prepare.sh here and carry .device" in done.stderr
