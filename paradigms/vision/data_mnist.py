"""The MNIST family: MNIST (``mnist.npz``) and Fashion-MNIST (gzip'd IDX files), then torchvision's folders."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from tiedlab.paradigms.paths import DataFormatError, DataNotFoundError, read_npz, verify_files

from .data_common import Splits, from_cache_or_download, root_or_none, torchvision_from_root

# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------


def _check_pair(
    path: Path, x: np.ndarray, y: np.ndarray, split: str, hw: tuple[int, int], fix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype != np.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != hw:
        raise DataFormatError(f"{path}: x_{split} must be uint8 of shape (N, {hw[0]}, {hw[1]}), got {x.dtype} {x.shape}. Fix: {fix}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataFormatError(f"{path}: y_{split} has shape {y.shape} but x_{split} has {len(x)} images. Fix: {fix}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataFormatError(f"{path}: y_{split} labels must be in 0..9, got {int(y.min())}..{int(y.max())}. Fix: {fix}")
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def load_mnist(*, download: bool) -> Splits:
    root = root_or_none()
    tried: list[str] = []
    classes = tuple(str(i) for i in range(10))
    if root is not None:
        npz = root / "mnist" / "mnist.npz"
        tried.append(str(npz))
        if npz.exists():
            verify_files([npz])
            fix = "copy mnist.npz again from the shared data folder (or remove it to fall back to torchvision)"
            z = read_npz(npz, ("x_train", "y_train", "x_test", "y_test"), fix=fix)
            tx, ty = _check_pair(npz, z["x_train"], z["y_train"], "train", (28, 28), fix)
            ex, ey = _check_pair(npz, z["x_test"], z["y_test"], "test", (28, 28), fix)
            return tx, ty, ex, ey, "MNIST", classes
        tv_root = root / "mnist"
        tried.append(str(tv_root / "MNIST" / "raw"))
        if (tv_root / "MNIST" / "raw").is_dir():
            return (*torchvision_from_root("MNIST", tv_root), "MNIST", classes)
    return from_cache_or_download("MNIST", "mnist", "MNIST/raw", "MNIST", classes, tried, root, download)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------

_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: str | os.PathLike[str], *, expect_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (optionally gzip'd, by the ``.gz`` suffix) holding unsigned bytes.

    Header: two zero bytes, type code 0x08 (uint8), ndim, then ndim big-endian uint32 dims.

    Raises:
        DataFormatError: naming the file, for bad gzip data, a wrong magic number or a payload whose
            size disagrees with the header.
    """
    path = Path(path)
    fix = "copy the file again (the official files come from the Fashion-MNIST/MNIST sites or `apt-get install dataset-fashion-mnist`)"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"missing {path}. Fix: {fix}") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{path} is not a valid gzip file or is truncated ({type(exc).__name__}: {exc}). Fix: {fix}") from exc
    if len(raw) < 4:
        raise DataFormatError(f"{path}: only {len(raw)} bytes, too short for an IDX header. Fix: {fix}")
    zero1, zero2, dtype_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or dtype_code != 0x08:
        magic = int.from_bytes(raw[:4], "big")
        raise DataFormatError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x0000080N for unsigned-byte data). Fix: {fix}"
        )
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataFormatError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}. Fix: {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header}). Fix: {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) if dims else 1
    got = len(raw) - header
    if got != expected:
        raise DataFormatError(
            f"{path}: IDX header says dims {dims} = {expected} bytes of data, but the file holds {got}. Fix: {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_fashion(*, download: bool) -> Splits:
    root = root_or_none()
    tried: list[str] = []
    if root is not None:
        folder = root / "fashion-mnist"
        paths = {k: folder / f for k, f in _FASHION_FILES.items()}
        present = [p.exists() for p in paths.values()]
        tried.append(str(folder / "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"))
        if any(present):
            if not all(present):
                missing = [str(p) for p in paths.values() if not p.exists()]
                raise DataNotFoundError(
                    f"Fashion-MNIST in {folder} is incomplete: missing {missing}. Fix: copy all four "
                    f"files {sorted(_FASHION_FILES.values())} (e.g. `apt-get install dataset-fashion-mnist`)."
                )
            verify_files(paths.values())
            arrays = {k: read_idx(p, expect_ndim=3 if k.endswith("_x") else 1) for k, p in paths.items()}
            out = []
            for split in ("train", "test"):
                x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
                if x.shape[1:] != (28, 28):
                    raise DataFormatError(
                        f"{paths[split + '_x']}: images are {x.shape[1:]}, expected (28, 28). Fix: copy it again."
                    )
                if len(x) != len(y):
                    raise DataFormatError(
                        f"{paths[split + '_x']} has {len(x)} images but {paths[split + '_y']} has {len(y)} labels. "
                        f"Fix: copy both files again."
                    )
                if len(y) and y.max() > 9:
                    raise DataFormatError(
                        f"{paths[split + '_y']}: labels must be in 0..9, got max {int(y.max())}. Fix: copy it again."
                    )
                out += [torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))]
            return (*out, "Fashion-MNIST", _FASHION_CLASSES)
        tried.append(str(folder / "FashionMNIST" / "raw"))
        if (folder / "FashionMNIST" / "raw").is_dir():
            return (*torchvision_from_root("FashionMNIST", folder), "Fashion-MNIST", _FASHION_CLASSES)
    return from_cache_or_download(
        "FashionMNIST", "fashion-mnist", "FashionMNIST/raw", "Fashion-MNIST", _FASHION_CLASSES, tried, root, download
    )


