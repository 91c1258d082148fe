"""Every checkout runs its own code: `.ci/env.sh` (what `make test` and `make demo` source) installs a clone into
that clone's own .venv, over a dependency environment that no clone writes into."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import shutil, tiedlab.core as c; print(c.__file__); print(getattr(c, 'CLONE_MARK', None)); "
         "print(shutil.which('tiedlab-vision'))")


def _source_and_probe(clone: Path) -> list[str]:
    done = subprocess.run(["bash", "-c", f"source .ci/env.sh && python -c \"{PROBE}\""], cwd=clone,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


@pytest.mark.skipif(not os.environ.get("TIEDLAB_DEPS"), reason="run through .ci/env.sh (make test), which sets "
                    "TIEDLAB_DEPS to the dependency environment the clones share")
def test_two_clones_run_their_own_code(tmp_path):
    deps = Path(os.environ["TIEDLAB_DEPS"])
    clones = {}
    for name in ("a", "b"):
        clones[name] = tmp_path / name
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clones[name])], check=True, timeout=120)
    with open(clones["b"] / "core" / "__init__.py", "a") as fh:  # b's code differs from a's
        fh.write('\nCLONE_MARK = "b"\n')

    first_a = _source_and_probe(clones["a"])
    probe_b = _source_and_probe(clones["b"])  # sourcing in b after a must not move a
    again_a = _source_and_probe(clones["a"])

    assert first_a == again_a
    assert first_a[0] == str(clones["a"] / "core" / "__init__.py") and first_a[1] == "None"
    assert first_a[2] == str(clones["a"] / ".venv" / "bin" / "tiedlab-vision")
    assert probe_b == [str(clones["b"] / "core" / "__init__.py"), "b", str(clones["b"] / ".venv" / "bin" / "tiedlab-vision")]
    # the shared dependency environment holds no tiedlab: nothing a clone installs lands there
    shared = subprocess.run([str(deps / "bin" / "python"), "-c", "import tiedlab.core"], capture_output=True,
                            text=True, timeout=120)
    assert shared.returncode != 0 and "No module named 'tiedlab" in shared.stderr
