"""What every vision dataset loader shares: the in-memory splits, their statistics and the torchvision fallbacks.

Shapes: see :class:`VisionData`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tiedlab.paradigms.paths import DATA_ENV, DataFormatError, DataNotFoundError, cache_dir, data_root, verify_files

# what the per-dataset loaders return: (train_x, train_y, test_x, test_y, display_name, class_names)
Splits = tuple


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
# splits and statistics
# --------------------------------------------------------------------------------------------


def stratified_indices(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
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


def limit(x: torch.Tensor, y: torch.Tensor, n: int, seed: int, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1000003 + salt)
    idx = torch.randperm(len(y), generator=gen)[:n]
    return x.index_select(0, idx), y.index_select(0, idx)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def root_or_none() -> Path | None:
    try:
        return data_root()
    except DataNotFoundError:
        return None


def not_found(label: str, tried: list[str], env_note: str | None) -> DataNotFoundError:
    lines = "\n".join(f"  - {t}" for t in tried)
    note = f"\n{env_note}" if env_note else ""
    return DataNotFoundError(
        f"no copy of {label} found. Looked at:\n{lines}{note}\n"
        f"Fix: set ${DATA_ENV} to the shared data folder (e.g. export {DATA_ENV}=/path/to/shared/data) "
        f"or set data.download=true (download=True from Python) to let torchvision download it into the cache."
    )


def env_note(root: Path | None) -> str | None:
    if root is not None:
        return None
    value = os.environ.get(DATA_ENV)
    return f"${DATA_ENV} is {'unset' if not value else repr(value) + ' (not a directory)'}."


def torchvision_split(
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
            f"Fix: delete that folder and copy it again, or set data.download=true (download=True from Python)."
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


def torchvision_from_root(cls_name: str, root: Path) -> tuple[torch.Tensor, ...]:
    """Train/test tensors from a torchvision folder inside the data root, its files verified first."""
    _verify_existing(root / f for f in _TORCHVISION_FILES[cls_name])
    return torchvision_split(cls_name, root, download=False)[:4]



def from_cache_or_download(
    cls_name: str,
    key: str,
    sub: str,
    display: str,
    classes: tuple[str, ...],
    tried: list[str],
    root: Path | None,
    download: bool,
) -> Splits:
    """A torchvision copy previously downloaded into the cache, or a fresh download."""
    dl_root = cache_dir("vision", key)
    tried.append(str(dl_root / sub))
    if (dl_root / sub).is_dir() or download:
        tx, ty, ex, ey, cl = torchvision_split(cls_name, dl_root, download=download)
        return tx, ty, ex, ey, display, classes or cl
    raise not_found(display, tried, env_note(root))

