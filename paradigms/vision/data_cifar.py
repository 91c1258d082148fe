"""CIFAR-10: the shared JPEG q75 copy (``cifar10_jpeg.npz``, decoded once and cached), then torchvision's folders."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from tiedlab.paradigms.paths import DataFormatError, cache_dir, read_npz, verify_files
from tiedlab.paradigms.rundir import atomic_write_bytes

from .data_common import Splits, from_cache_or_download, root_or_none, torchvision_from_root

_CIFAR_JPEG_DISPLAY = "CIFAR-10 (JPEG q75 copy)"
_CACHE_FORMAT = "v1"
_CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def _decode_jpegs(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
    """Decode JPEG byte buffers to (3, H, W) uint8 tensors (module-level so tests can patch it)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(buffers, mode=ImageReadMode.RGB)


def _decode_split(path: Path, split: str, buf: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    fix = "copy cifar10_jpeg.npz again from the shared data folder (or remove it to fall back to torchvision)"
    if buf.ndim != 1 or buf.dtype != np.uint8:
        raise DataFormatError(f"{path}: {split}_jpeg must be a 1-D uint8 buffer, got {buf.dtype} {buf.shape}. Fix: {fix}")
    n = len(labels)
    if offsets.ndim != 1 or len(offsets) != n + 1:
        raise DataFormatError(
            f"{path}: {split}_offsets has {len(offsets)} entries but {split}_labels has {n} "
            f"(expected {n + 1}). Fix: {fix}"
        )
    if n == 0:
        raise DataFormatError(f"{path}: the {split} split is empty. Fix: {fix}")
    offsets = offsets.astype(np.int64, copy=False)
    if offsets[0] != 0 or offsets[-1] != len(buf) or np.any(np.diff(offsets) <= 0):
        raise DataFormatError(
            f"{path}: {split}_offsets do not match {split}_jpeg (first={int(offsets[0])}, "
            f"last={int(offsets[-1])}, buffer length={len(buf)}, non-increasing steps="
            f"{int(np.sum(np.diff(offsets) <= 0))}). Fix: {fix}"
        )
    whole = torch.from_numpy(buf)
    pieces = [whole[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    try:
        images = _decode_jpegs(pieces)
    except RuntimeError as exc:
        bad = _first_bad_jpeg(pieces)
        raise DataFormatError(
            f"{path}: {split} image {bad} is not a valid JPEG ({' '.join(str(exc).split())[:200]}). Fix: {fix}"
        ) from exc
    shapes = {tuple(im.shape) for im in images}
    if shapes != {(3, 32, 32)}:
        raise DataFormatError(f"{path}: decoded {split} images have shapes {sorted(shapes)}, expected only (3, 32, 32). Fix: {fix}")
    return torch.stack(images).numpy()


def _first_bad_jpeg(pieces: list[torch.Tensor]) -> int | str:
    for i, p in enumerate(pieces):
        try:
            _decode_jpegs([p])
        except RuntimeError:
            return i
    return "?"


def _cifar_cache_file(src: Path) -> tuple[Path, str]:
    st = src.stat()
    tag = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:10]
    prefix = f"cifar10-jpeg-decoded_{tag}_"
    return cache_dir("vision") / f"{prefix}{st.st_size}_{st.st_mtime_ns}_{_CACHE_FORMAT}.npz", prefix


def _load_cifar_jpeg(src: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoded CIFAR-10 JPEG copy, from the decode cache when it matches the source's size/mtime."""
    cache, prefix = _cifar_cache_file(src)
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            return tuple(torch.from_numpy(arrays[k]) for k in ("train_x", "train_y", "test_x", "test_y"))  # type: ignore[return-value]
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache is rebuilt below
    fix = "copy cifar10_jpeg.npz again from the shared data folder (or remove it to fall back to torchvision)"
    keys = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels")
    z = read_npz(src, keys, fix=fix)
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        labels = z[f"{split}_labels"]
        if labels.ndim != 1 or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
            raise DataFormatError(f"{src}: {split}_labels must be 1-D in 0..9. Fix: {fix}")
        out[f"{split}_x"] = _decode_split(src, split, z[f"{split}_jpeg"], z[f"{split}_offsets"], labels)
        out[f"{split}_y"] = labels.astype(np.int64)
    _save_npz(cache, out)
    for old in cache.parent.glob(f"{prefix}*.npz"):
        if old != cache:
            try:
                old.unlink()
            except OSError:
                pass
    return tuple(torch.from_numpy(out[k]) for k in ("train_x", "train_y", "test_x", "test_y"))  # type: ignore[return-value]


def _save_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` of ``arrays`` written atomically (``rundir.atomic_write_bytes``), readable by all."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with buffer.getbuffer() as view:
        atomic_write_bytes(target, view)
    os.chmod(target, 0o644)  # mkstemp makes 0600; the cache is not secret


def load_cifar10(*, download: bool) -> Splits:
    root = root_or_none()
    tried: list[str] = []
    if root is not None:
        npz = root / "cifar10-jpeg" / "cifar10_jpeg.npz"
        tried.append(str(npz))
        if npz.exists():
            verify_files([npz])
            tx, ty, ex, ey = _load_cifar_jpeg(npz)
            return tx, ty, ex, ey, _CIFAR_JPEG_DISPLAY, _CIFAR_CLASSES
        tv_root = root / "cifar10"
        tried.append(str(tv_root / "cifar-10-batches-py"))
        if (tv_root / "cifar-10-batches-py").is_dir():
            return (*torchvision_from_root("CIFAR10", tv_root), "CIFAR-10", _CIFAR_CLASSES)
    return from_cache_or_download("CIFAR10", "cifar10", "cifar-10-batches-py", "CIFAR-10", _CIFAR_CLASSES, tried, root, download)


