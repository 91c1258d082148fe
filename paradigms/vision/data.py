"""Image classification datasets as uint8 tensors: CIFAR-10, MNIST, Fashion-MNIST and sklearn digits.

This module is the entry point (:func:`load_vision_data`); the loaders live by dataset family in
:mod:`.data_cifar` (the JPEG copy and torchvision's folders), :mod:`.data_mnist` (MNIST's npz and
Fashion-MNIST's IDX files), :mod:`.data_digits` (sklearn), and what they share in :mod:`.data_common`.

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

import os

import numpy as np
import torch

from tiedlab.paradigms.paths import DataFormatError, DataIntegrityError, DataNotFoundError

from ..base import check_int
from ..shared_data import decoded_once
from .data_cifar import load_cifar10
from .data_common import VisionData, channel_stats, check_image_shape, limit, stratified_indices
from .data_digits import load_digits
from .data_mnist import load_fashion, load_mnist, read_idx

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

    Inside ``shared_data()`` (a seed batch) a second call with the same arguments and data root returns the same
    tensors, shared by the runs the process trains together; do not modify them in place.

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
    check_int("val_size", val_size, 0)
    check_int("limit_train", limit_train, allow_none=True)
    check_int("limit_test", limit_test, allow_none=True)
    memo = ("vision", key, val_size, seed, download, limit_train, limit_test, os.environ.get("TIEDLAB_DATA"))
    return decoded_once(memo, lambda: _load(key, val_size, seed, download, limit_train, limit_test))


def _load(key: str, val_size: int, seed: int, download: bool, limit_train: int | None,
          limit_test: int | None) -> VisionData:
    """``load_vision_data`` without the per-process memo (the arguments checked, ``key`` canonical)."""
    if key == "digits":
        train_x, train_y, val_x, val_y, test_x, test_y, display, classes = load_digits(
            val_size=val_size, seed=seed
        )
    else:
        loader = {"cifar10": load_cifar10, "mnist": load_mnist, "fashion-mnist": load_fashion}[key]
        full_x, full_y, test_x, test_y, display, classes = loader(download=download)
        if val_size >= len(full_y):
            raise ValueError(
                f"val_size={val_size} must be smaller than the {key} train split ({len(full_y)} images)"
            )
        val_idx = stratified_indices(full_y.numpy(), val_size, np.random.default_rng(seed))
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
        train_x, train_y = limit(train_x, train_y, limit_train, seed, salt=1)
    if limit_test is not None:
        test_x, test_y = limit(test_x, test_y, limit_test, seed, salt=2)

    mean, std = channel_stats(train_x)
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

