"""Which packages the build holds: every folder with an ``__init__.py`` under the mapped top-level folders.

The metadata is in pyproject.toml; only the package list is computed here, because setuptools' own discovery
(``[tool.setuptools.packages.find]``) cannot put the found packages under the ``tiedlab.`` prefix. A new adapter
(``paradigms/<name>/__init__.py``) is therefore built and installed without an edit here or in pyproject.toml
(tests/paradigms/test_packaging.py builds a wheel to check it).
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# The repository's top-level folders are the subpackages of the `tiedlab` namespace (PEP 420: there is no
# tiedlab/__init__.py).
PACKAGE_DIR = {
    "tiedlab.core": "core",
    "tiedlab.paradigms": "paradigms",
    "tiedlab.configs": "configs",
    "tiedlab.reports": "reports/builder",
}


def packages() -> list[str]:
    found = []
    for name, folder in PACKAGE_DIR.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(where=str(ROOT / folder))]
    return sorted(found)


setup(packages=packages(), package_dir=PACKAGE_DIR)
