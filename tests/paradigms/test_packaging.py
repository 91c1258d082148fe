"""The build finds its packages: a wheel built from a copy of this checkout with a new adapter folder
(``paradigms/newparadigm/__init__.py``) and no edit to pyproject.toml or setup.py holds the new package, every
package and module of the checkout and the configs' YAML files, and nothing else (no committed report outputs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The installed name of each top-level folder (as in setup.py, written out again so that a change there shows).
FOLDERS = {"core": "tiedlab/core", "paradigms": "tiedlab/paradigms", "configs": "tiedlab/configs",
           "reports/builder": "tiedlab/reports"}
# The packages the build held when they were still listed by hand in pyproject.toml.
LISTED = ("tiedlab/core", "tiedlab/paradigms", "tiedlab/paradigms/vision", "tiedlab/paradigms/ssl",
          "tiedlab/paradigms/graph", "tiedlab/paradigms/language", "tiedlab/configs", "tiedlab/reports")


def _copy_checkout(dest: Path) -> None:
    """The files a clone would have, plus untracked files git does not ignore (no .venv, runs, build output)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the work tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _installed(folder: str, path: Path, src_root: Path) -> str:
    return f"{FOLDERS[folder]}/{path.relative_to(src_root / folder).as_posix()}"


def test_wheel_discovers_a_new_adapter_package(tmp_path):
    src = tmp_path / "src"
    _copy_checkout(src)
    (src / "paradigms" / "newparadigm").mkdir()
    (src / "paradigms" / "newparadigm" / "__init__.py").write_text('"""A new adapter."""\n')
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (wheel,) = dist.glob("tiedlab-*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())

    assert "tiedlab/paradigms/newparadigm/__init__.py" in files
    for package in LISTED:
        assert f"{package}/__init__.py" in files, package
    # every module of the source folders (packages are the folders with an __init__.py), and every config
    expected = set()
    for folder in FOLDERS:
        for init in (src / folder).rglob("__init__.py"):
            if all((d / "__init__.py").is_file() for d in init.parents if src / folder in (d, *d.parents)):
                expected |= {_installed(folder, p, src) for p in init.parent.glob("*.py")}
    expected |= {_installed("configs", p, src) for p in (src / "configs").rglob("*.yaml")}
    assert len([f for f in expected if f.startswith("tiedlab/configs/") and f.endswith(".yaml")]) > 50
    code = {f for f in files if not f.startswith("tiedlab-")}  # less the .dist-info folder
    assert code == expected, (sorted(expected - code)[:10], sorted(code - expected)[:10])
    assert {f.split("/", 1)[0] for f in files} == {"tiedlab", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "tiedlab/__init__.py" not in files  # tiedlab stays a namespace (PEP 420)
