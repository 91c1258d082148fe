"""The vision paradigm: supervised image classification with a stem -> core Block -> pool -> linear head.

Data live on the training device as whole uint8 tensors; each training batch is cut with one
``index_select``, augmented on the device (random crop + flip for CIFAR-10 by default) and
normalised there, all randomness drawn from the generator the engine passes in. See
:mod:`tiedlab.paradigms.vision.model` for the model and the MDEQ cell, :mod:`.options` for the config
sections and :mod:`.data` for the datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tiedlab.core import BlockSpec

from ..base import DataBundle, Paradigm, StepOutput
from .augment import iterate_batches, normalize, random_crop_flip
from .data import VisionData, check_image_shape, load_vision_data
from .model import MDEQCell, VisionClassifier, build_backbone, make_cell
from .options import AUGMENTS, DEFAULT_AUGMENT, VisionDataOptions, VisionOptions

__all__ = ["VisionParadigm", "VisionDataOptions", "VisionOptions", "VisionDataBundle", "AUGMENTS", "DEFAULT_AUGMENT"]


@dataclass
class VisionDataBundle(DataBundle):
    """A DataBundle that also holds the device-resident splits evaluation reads.

    Attributes:
        splits: {"train" | "val" | "test": (uint8 images (N, C, H, W), int64 labels (N,))} on the device.
        mean / std: per-channel normalisation in [0, 1] units (from the train split).
    """

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    num_classes: int = 0
    eval_batch_size: int = 1000


class VisionParadigm(Paradigm):
    """Supervised image classification (CIFAR-10, MNIST, Fashion-MNIST, sklearn digits)."""

    name = "vision"
    DataOptions = VisionDataOptions
    ModelOptions = VisionOptions
    primary_metric = "acc"
    higher_is_better = True
    data_parallel = True  # (images, labels), mean cross-entropy, GroupNorm: slices average to the batch
    scores_train = True  # the training images without augmentation
    seed_batch = True  # (images, labels) of one shape per seed; no host reads in the step

    @classmethod
    def unread_options(cls, data: Any, model: Any) -> dict[str, str]:
        """data.crop_padding when the augmentation in effect has no crop (``augment_kind``: "auto" resolved)."""
        augment = (data or {}).get("augment", "auto")
        kind = DEFAULT_AUGMENT.get((data or {}).get("name"), augment) if augment == "auto" else augment
        if kind in ("none", "flip"):
            return {"data.crop_padding": f"the augmentation in effect ({kind}) has no random crop"}
        return {}

    # ----------------------------------------------------------------- data
    def build_data(self) -> VisionDataBundle:
        opts: VisionDataOptions = self.data_opts
        raw: VisionData = load_vision_data(
            opts.name, val_size=opts.val_size, seed=opts.split_seed, download=opts.download,
            limit_train=opts.limit_train, limit_test=opts.limit_test)
        check_image_shape(raw, opts.expected_shape(raw.image_shape))
        dev = self.device
        splits = {
            "train": (raw.train_x.to(dev), raw.train_y.to(dev)),
            "val": (raw.val_x.to(dev), raw.val_y.to(dev)),
            "test": (raw.test_x.to(dev), raw.test_y.to(dev)),
        }
        n_train = len(raw.train_y)
        batch_size = min(self.batch_size, n_train)
        kind = opts.augment_kind
        mean, std = raw.mean, raw.std
        train_x, train_y = splits["train"]

        def train_batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for xb, yb in iterate_batches(train_x, train_y, batch_size, shuffle=True, generator=generator,
                                          drop_last=True):
                if kind != "none":
                    xb = random_crop_flip(xb, padding=opts.crop_padding if "crop" in kind else 0,
                                          flip="flip" in kind, generator=generator)
                yield normalize(xb, mean, std), yb

        meta = {
            "dataset": raw.display_name, "name": raw.name, "image_shape": list(raw.image_shape),
            "num_classes": raw.num_classes, "train_size": n_train, "val_size": len(raw.val_y),
            "test_size": len(raw.test_y), "batch_size": batch_size, "augment": kind,
        }
        return VisionDataBundle(
            train_batches=train_batches, steps_per_epoch=n_train // batch_size, samples_per_step=batch_size,
            meta=meta, splits=splits, mean=mean, std=std, num_classes=raw.num_classes,
            eval_batch_size=opts.eval_batch_size)

    # ----------------------------------------------------------------- model
    def cell(self, data: DataBundle) -> MDEQCell:
        return make_cell(self.model_opts)

    def build_model(self, data: DataBundle, spec: BlockSpec) -> VisionClassifier:
        if not isinstance(data, VisionDataBundle):
            raise TypeError(f"build_model needs the VisionDataBundle that build_data returned, got {type(data).__name__}")
        in_channels = int(data.meta["image_shape"][0])
        backbone = build_backbone(in_channels, self.model_opts, spec, cell_factory=lambda: self.cell(data))
        return VisionClassifier(backbone, data.num_classes).to(self.device)

    # ----------------------------------------------------------------- step and evaluation
    def training_step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        images, labels = batch
        logits, stats = model(images)
        logits = logits.float()
        loss = F.cross_entropy(logits, labels, label_smoothing=self.model_opts.label_smoothing)
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss=loss, stats=stats, metrics={"train/acc": acc})

    def score(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        if not isinstance(data, VisionDataBundle):
            raise TypeError(f"evaluate needs the VisionDataBundle that build_data returned, got {type(data).__name__}")
        if split not in data.splits:
            raise ValueError(f"split {split!r} is not valid; choose one of {sorted(data.splits)}")
        x, y = data.splits[split]
        if len(y) == 0:
            raise ValueError(f"the {split} split is empty (data.val_size / data.limit_test)")
        loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
        correct = torch.zeros((), dtype=torch.int64, device=y.device)
        for xb, yb in iterate_batches(x, y, data.eval_batch_size, shuffle=False):
            logits, _ = model(normalize(xb, data.mean, data.std))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
        n = len(y)
        return {f"{split}/acc": float(correct) / n, f"{split}/loss": float(loss_sum) / n}
