"""scikit-learn's bundled 8x8 digits: fixed test split, seeded validation split."""

from __future__ import annotations

import numpy as np
import torch

from .data_common import stratified_indices

_DIGITS_TEST = 300
_DIGITS_VAL = 200


def load_digits(*, val_size: int, seed: int) -> tuple:
    """1797 8x8 digits: a fixed stratified test split of 300 (independent of ``seed``), then 200
    validation images drawn with ``seed`` from the remaining 1497 (none when ``val_size == 0``)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    test_idx = stratified_indices(labels, _DIGITS_TEST, np.random.default_rng(0))
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    if val_size > 0:
        val_local = stratified_indices(labels[rest], _DIGITS_VAL, np.random.default_rng(seed))
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

