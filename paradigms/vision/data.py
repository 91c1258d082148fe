"""Image classification datasets as uint8 tensors: CIFAR-10, MNIST, Fashion-MNIST and sklearn digits.

Every loader returns a :class:`VisionData` that holds whole splits in memory (uint8 images, int64
labels) so that training code can move them to the device once and slice batches from there
(see :mod:`tiedlab.paradigms.vision.augment`).

Where the data come from (first hit wins; ``<root>`` is ``$TIEDLAB_DATA``, ``<cache>`` is
``cache_dir("vision")``):

- ``cifar10``: ``<root>/cifar10-jpeg/cifar10_jpeg.npz`` (a JPEG q75 copy; decoded once and cached
  in ``<cache>``), then torchvision's ``<root>/cifar10/cifar-10-batches-py``, then a previous
  torchvision download in ``<cache>/cifar10``, then (``download=True``) a fresh download there.
- ``mnist``: ``<root>/mnist/mnist.npz``, then torchvision's ``<root>/mnist/MNIST/raw``, then
  ``<cache>/mnist``, then a download.
- ``fashion-mnist``: the official gzip'd IDX files in ``<root>/fashion-mnist/``, then torchvision's
  ``<root>/fashion-mnist/FashionMNIST/raw``, then ``<cache>/fashion-mnist``, then a download.
- ``digits``: sklearn's bundled ``load_digits`` (8x8, scaled from 0..16 to 0..255).

Every data-root file read is first checked against ``<root>/SHA256SUMS`` when the root has one
(:class:`DataIntegrityError` on a mismatch; see :func:`tiedlab.paradigms.paths.verify_files`). A file
that exists but is damaged raises :class:`DataFormatError` naming the file (it never silently falls
back to another source); nothing found raises :class:`DataNotFoundError` listing every path tried.
Both errors are ``ValueError`` subclasses.

Ordering: the train split keeps the source order (the official order for MNIST and Fashion-MNIST;
class-grouped for the CIFAR-10 JPEG copy) with the validation images taken out, so with
``val_size=0`` ``train_x`` is exactly the official train split. The validation images also keep
their source order. The test split is the official one in its official order. ``limit_train`` /
``limit_test`` replace that order with a seeded shuffle and keep the first N.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
import torch

from tiedlab.paradigms.paths import (
    DATA_ENV,
    DataFormatError,
    DataIntegrityError,
    DataNotFoundError,
    cache_dir,
    data_root,
    read_npz,
    verify_files,
)

__all__ = [
    "VisionData",
    "VISION_DATASETS",
    "load_vision_data",
    "check_image_shape",
    "read_idx",
    "DataNotFoundError",
    "DataFormatError",
    "DataIntegrityError",
]

VISION_DATASETS: tuple[str, ...] = ("cifar10", "mnist", "fashion-mnist", "digits")

_ALIASES = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "digits": "digits",
}

_CIFAR_JPEG_DISPLAY = "CIFAR-10 (JPEG q75 copy)"
_CACHE_FORMAT = "v1"
_DIGITS_TEST = 300
_DIGITS_VAL = 200
# what the per-dataset loaders return: (train_x, train_y, test_x, test_y, display_name, class_names)
_Splits = tuple


@dataclass(repr=False)
class VisionData:
    """Whole image-classification splits held in memory.

    Shapes:
        ``*_x``: (N, C, H, W) uint8 in 0..255; ``*_y``: (N,) int64 in 0..num_classes-1.
        ``mean`` / ``std``: per channel, length C, in [0, 1] units, computed on ``train_x``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    display_name: str
    class_names: tuple[str, ...] = field(default=())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        return (
            f"VisionData(name={self.name!r}, display_name={self.display_name!r}, "
            f"image_shape={self.image_shape}, train={len(self.train_y)}, val={len(self.val_y)}, "
            f"test={len(self.test_y)}, num_classes={self.num_classes}, "
            f"mean={tuple(round(m, 4) for m in self.mean)}, std={tuple(round(s, 4) for s in self.std)})"
        )


def check_image_shape(data: VisionData, expected: tuple[int, int, int]) -> None:
    """Raise if the data's (C, H, W) differs from what the model config expects.

    Raises:
        ValueError: naming the actual and expected shapes and the config keys
            ``data.channels`` / ``data.image_size`` to fix.
    """
    actual = data.image_shape
    expected = tuple(int(v) for v in expected)  # type: ignore[assignment]
    if len(expected) != 3:
        raise ValueError(f"expected must be (C, H, W), got {expected!r}")
    if actual == expected:
        return
    c, h, w = actual
    size = str(h) if h == w else f"[{h},{w}]"
    raise ValueError(
        f"dataset {data.name!r} ({data.display_name}) has images of shape (C,H,W)={actual}, but the "
        f"model is configured for {expected}. Set data.channels={c} and data.image_size={size} "
        f"(or pick a dataset with {expected} images)."
    )


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def load_vision_data(
    name: str,
    *,
    val_size: int = 5000,
    seed: int = 0,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> VisionData:
    """Load a dataset with a seeded, class-stratified validation split taken out of the train split.

    Args:
        name: one of ``cifar10``, ``mnist``, ``fashion-mnist``, ``digits``.
        val_size: images moved from the official train split to ``val_*`` (0 = none). For
            ``digits`` the split is fixed at 1297/200/300 for any ``val_size > 0``; with
            ``val_size=0`` the 200 validation images stay in train (1497/0/300).
        seed: seeds the validation split and the ``limit_*`` shuffles.
        download: let torchvision download into ``cache_dir("vision", name)`` if no local copy exists.
        limit_train / limit_test: keep the first N after a seeded shuffle (quick tests).

    Shapes:
        see :class:`VisionData`.

    Raises:
        ValueError: unknown name or bad sizes.
        DataIntegrityError: a data file differs from its line in ``<root>/SHA256SUMS`` (named).
        DataFormatError: a damaged data file (named in the message, with the fix).
        DataNotFoundError: no copy of the data found (the message lists the paths tried).
    """
    if not isinstance(name, str) or name.strip().lower().replace("_", "-") not in _ALIASES:
        raise ValueError(
            f"unknown vision dataset {name!r}; valid names: {', '.join(VISION_DATASETS)}"
        )
    key = _ALIASES[name.strip().lower().replace("_", "-")]
    if not isinstance(val_size, int) or isinstance(val_size, bool) or val_size < 0:
        raise ValueError(f"val_size must be an int >= 0, got {val_size!r}")
    for arg, value in (("limit_train", limit_train), ("limit_test", limit_test)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{arg} must be None or an int >= 1, got {value!r}")

    if key == "digits":
        train_x, train_y, val_x, val_y, test_x, test_y, display, classes = _load_digits(
            val_size=val_size, seed=seed
        )
    else:
        loader = {"cifar10": _load_cifar10, "mnist": _load_mnist, "fashion-mnist": _load_fashion}[key]
        full_x, full_y, test_x, test_y, display, classes = loader(download=download)
        if val_size >= len(full_y):
            raise ValueError(
                f"val_size={val_size} must be smaller than the {key} train split ({len(full_y)} images)"
            )
        val_idx = _stratified_indices(full_y.numpy(), val_size, np.random.default_rng(seed))
        keep = np.ones(len(full_y), dtype=bool)
        keep[val_idx] = False
        train_idx = torch.from_numpy(np.flatnonzero(keep))
        val_idx_t = torch.from_numpy(val_idx)
        if len(val_idx) == 0:
            train_x, train_y = full_x, full_y
        else:
            train_x, train_y = full_x.index_select(0, train_idx), full_y.index_select(0, train_idx)
        val_x, val_y = full_x.index_select(0, val_idx_t), full_y.index_select(0, val_idx_t)

    if limit_train is not None:
        train_x, train_y = _limit(train_x, train_y, limit_train, seed, salt=1)
    if limit_test is not None:
        test_x, test_y = _limit(test_x, test_y, limit_test, seed, salt=2)

    mean, std = _channel_stats(train_x)
    num_classes = len(classes) if classes else int(torch.cat([train_y, test_y]).max()) + 1
    return VisionData(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        mean=mean,
        std=std,
        name=key,
        display_name=display,
        class_names=tuple(classes),
    )


# --------------------------------------------------------------------------------------------
# splits and statistics
# --------------------------------------------------------------------------------------------


def _stratified_indices(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` sorted indices drawn per class in proportion to class sizes (largest remainder)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    classes, sizes = np.unique(labels, return_counts=True)
    quota = count * sizes / sizes.sum()
    take = np.floor(quota).astype(np.int64)
    short = count - int(take.sum())
    if short > 0:
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:short]] += 1
    picked = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _limit(x: torch.Tensor, y: torch.Tensor, n: int, seed: int, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1000003 + salt)
    idx = torch.randperm(len(y), generator=gen)[:n]
    return x.index_select(0, idx), y.index_select(0, idx)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std in [0, 1] units from 256-bin histograms (fast, no float copy)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double().numpy()
        total = hist.sum()
        if total == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        mean = float((hist * values).sum() / total)
        var = float((hist * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------------------------
# source lookup helpers
# --------------------------------------------------------------------------------------------


def _root_or_none() -> Path | None:
    try:
        return data_root()
    except DataNotFoundError:
        return None


def _not_found(label: str, tried: list[str], env_note: str | None) -> DataNotFoundError:
    lines = "\n".join(f"  - {t}" for t in tried)
    note = f"\n{env_note}" if env_note else ""
    return DataNotFoundError(
        f"no copy of {label} found. Looked at:\n{lines}{note}\n"
        f"Fix: set ${DATA_ENV} to the shared data folder (e.g. export {DATA_ENV}=/path/to/shared/data) "
        f"or pass download=True to let torchvision download it into the cache."
    )


def _env_note(root: Path | None) -> str | None:
    if root is not None:
        return None
    value = os.environ.get(DATA_ENV)
    return f"${DATA_ENV} is {'unset' if not value else repr(value) + ' (not a directory)'}."


def _torchvision_split(
    cls_name: str, root: Path, *, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Train/test tensors from a torchvision dataset class (images as (N, C, H, W) uint8)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataFormatError(
            f"torchvision {cls_name} under {root} could not be read ({type(exc).__name__}: {reason}). "
            f"Fix: delete that folder and copy it again, or pass download=True."
        ) from exc

    def to_tensors(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
        data = ds.data  # type: ignore[attr-defined]
        x = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
        x = x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x.unsqueeze(1).contiguous()
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)  # type: ignore[attr-defined]
        return x, y

    tx, ty = to_tensors(train)
    ex, ey = to_tensors(test)
    classes = tuple(getattr(train, "classes", ()) or ())
    return tx, ty, ex, ey, classes


# the files torchvision reads from its folders (with download=False), relative to the root it is given
_TORCHVISION_FILES: dict[str, tuple[str, ...]] = {
    "CIFAR10": tuple(
        f"cifar-10-batches-py/{f}"
        for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                  "test_batch", "batches.meta")
    ),
    "MNIST": tuple(f"MNIST/raw/{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")),
    "FashionMNIST": tuple(
        f"FashionMNIST/raw/{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    ),
}


def _verify_existing(paths: Iterable[Path]) -> None:
    """Check the given data-root files that exist against SHA256SUMS (torchvision reports missing ones)."""
    verify_files(p for p in paths if p.is_file())


def _torchvision_from_root(cls_name: str, root: Path) -> tuple[torch.Tensor, ...]:
    """Train/test tensors from a torchvision folder inside the data root, its files verified first."""
    _verify_existing(root / f for f in _TORCHVISION_FILES[cls_name])
    return _torchvision_split(cls_name, root, download=False)[:4]


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

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
    _atomic_savez(cache, out)
    for old in cache.parent.glob(f"{prefix}*.npz"):
        if old != cache:
            try:
                old.unlink()
            except OSError:
                pass
    return tuple(torch.from_numpy(out[k]) for k in ("train_x", "train_y", "test_x", "test_y"))  # type: ignore[return-value]


def _atomic_savez(target: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is not secret
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _load_cifar10(*, download: bool) -> _Splits:
    root = _root_or_none()
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
            return (*_torchvision_from_root("CIFAR10", tv_root), "CIFAR-10", _CIFAR_CLASSES)
    return _from_cache_or_download("CIFAR10", "cifar10", "cifar-10-batches-py", "CIFAR-10", _CIFAR_CLASSES, tried, root, download)


def _from_cache_or_download(
    cls_name: str,
    key: str,
    sub: str,
    display: str,
    classes: tuple[str, ...],
    tried: list[str],
    root: Path | None,
    download: bool,
) -> _Splits:
    """A torchvision copy previously downloaded into the cache, or a fresh download."""
    dl_root = cache_dir("vision", key)
    tried.append(str(dl_root / sub))
    if (dl_root / sub).is_dir() or download:
        tx, ty, ex, ey, cl = _torchvision_split(cls_name, dl_root, download=download)
        return tx, ty, ex, ey, display, classes or cl
    raise _not_found(display, tried, _env_note(root))


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


def _load_mnist(*, download: bool) -> _Splits:
    root = _root_or_none()
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
            return (*_torchvision_from_root("MNIST", tv_root), "MNIST", classes)
    return _from_cache_or_download("MNIST", "mnist", "MNIST/raw", "MNIST", classes, tried, root, download)


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


def _load_fashion(*, download: bool) -> _Splits:
    root = _root_or_none()
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
            return (*_torchvision_from_root("FashionMNIST", folder), "Fashion-MNIST", _FASHION_CLASSES)
    return _from_cache_or_download(
        "FashionMNIST", "fashion-mnist", "FashionMNIST/raw", "Fashion-MNIST", _FASHION_CLASSES, tried, root, download
    )


# --------------------------------------------------------------------------------------------
# sklearn digits
# --------------------------------------------------------------------------------------------


def _load_digits(*, val_size: int, seed: int) -> tuple:
    """1797 8x8 digits: a fixed stratified test split of 300 (independent of ``seed``), then 200
    validation images drawn with ``seed`` from the remaining 1497 (none when ``val_size == 0``)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    test_idx = _stratified_indices(labels, _DIGITS_TEST, np.random.default_rng(0))
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    if val_size > 0:
        val_local = _stratified_indices(labels[rest], _DIGITS_VAL, np.random.default_rng(seed))
        val_idx = rest[val_local]
        train_idx = np.setdiff1d(rest, val_idx)
    else:
        val_idx = np.zeros(0, dtype=np.int64)
        train_idx = rest
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)

    def take(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(idx.astype(np.int64))
        return x.index_select(0, t), y.index_select(0, t)

    return (*take(train_idx), *take(val_idx), *take(test_idx), "sklearn digits (8x8)", tuple(str(i) for i in range(10)))
