"""Where tiedlab reads data from and where it may write caches.

The data root is read-only: tiedlab never writes there. Decoded arrays and copies that a
library insists on writing next to its input (PyG's processed files) go to the cache dir.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "TIEDLAB_DATA"
CACHE_ENV = "TIEDLAB_CACHE"

DATA_LAYOUT = """\
expected layout under the data root:
  cifar10-jpeg/cifar10_jpeg.npz        (or cifar10/cifar-10-batches-py/ from torchvision)
  mnist/mnist.npz
  fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  planetoid/{cora,citeseer}.npz and planetoid/raw/ind.*
  tu-gin/<NAME>/<NAME>.txt and tu-gin/<NAME>/10fold_idx/
  tinyshakespeare/input.txt
  austen/austen.txt"""


class DataNotFoundError(FileNotFoundError):
    """A data file or folder is missing; the message says where it was looked for and how to fix it."""


def data_root() -> Path:
    """The folder that holds the datasets, from ``$TIEDLAB_DATA``.

    Raises:
        DataNotFoundError: the variable is unset or names a folder that does not exist.
    """
    value = os.environ.get(DATA_ENV)
    if not value:
        raise DataNotFoundError(
            f"${DATA_ENV} is not set. Point it at the folder that holds the datasets, e.g.\n"
            f"  export {DATA_ENV}=/path/to/shared/data\n{DATA_LAYOUT}"
        )
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"${DATA_ENV}={value!r} is not a directory.\n{DATA_LAYOUT}")
    return root


def data_path(*parts: str) -> Path:
    """A path inside the data root that must exist.

    Raises:
        DataNotFoundError: naming the missing path and the variable to fix.
    """
    path = data_root().joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"missing {path} (data root ${DATA_ENV}={data_root()}).\n{DATA_LAYOUT}"
        )
    return path


def cache_dir(*parts: str) -> Path:
    """A writable cache folder (``$TIEDLAB_CACHE`` or ``~/.cache/tiedlab``), created on demand."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tiedlab").expanduser()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
