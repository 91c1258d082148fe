"""The vision paradigm: supervised image classification with a stem -> core Block -> pool -> linear head.

Data live on the training device as whole uint8 tensors; each training batch is cut with one
``index_select``, augmented on the device (random crop + flip for CIFAR-10 by default) and
normalised there, all randomness drawn from the generator the engine passes in. See
:mod:`tiedlab.paradigms.vision.model` for the model and the MDEQ cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tiedlab.core import BlockSpec

from ..base import DataBundle, Paradigm, StepOutput
from .augment import iterate_batches, normalize, random_crop_flip
from .data import VISION_DATASETS, VisionData, check_image_shape, load_vision_data
from .model import MDEQCell, VisionClassifier, VisionModelOptions, build_backbone, make_cell

__all__ = ["VisionParadigm", "VisionDataOptions", "VisionOptions", "VisionDataBundle", "AUGMENTS", "DEFAULT_AUGMENT"]

AUGMENTS = ("auto", "none", "flip", "crop", "crop_flip")
# what augment="auto" means per dataset (flips would turn digits into other glyphs)
DEFAULT_AUGMENT = {"cifar10": "crop_flip", "mnist": "none", "fashion-mnist": "none", "digits": "none"}


def _positive_int(where: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}={value!r} must be {'None or ' if allow_none else ''}an integer >= 1")


@dataclass
class VisionDataOptions:
    """The ``data:`` config section.

    Attributes:
        name: dataset, one of ``VISION_DATASETS``.
        val_size: images held out of the official train split for validation (>= 1: runs select by it).
        split_seed: seeds the validation split and ``limit_*`` shuffles (fixed across run seeds so that
            seeds share one split).
        limit_train / limit_test: keep N images (quick runs and tests); None = all.
        augment: "auto" (crop_flip for CIFAR-10, none for the digit-like sets), "none", "flip",
            "crop" or "crop_flip".
        crop_padding: zero padding of the random crop, in pixels.
        download: let torchvision download a missing dataset into the cache.
        channels / image_size: the (C, H, W) images the model is built for; a dataset whose images
            differ is an error that names the values to set. None = take whatever the data have.
        eval_batch_size: batch size of evaluation.
    """

    name: str = "cifar10"
    val_size: int = 5000
    split_seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    augment: str = "auto"
    crop_padding: int = 4
    download: bool = False
    channels: int | None = None
    image_size: int | Sequence[int] | None = None
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.name not in VISION_DATASETS:
            raise ValueError(f"data.name={self.name!r} is not valid; choose one of {VISION_DATASETS}")
        _positive_int("data.val_size", self.val_size)
        _positive_int("data.limit_train", self.limit_train, allow_none=True)
        _positive_int("data.limit_test", self.limit_test, allow_none=True)
        _positive_int("data.channels", self.channels, allow_none=True)
        _positive_int("data.eval_batch_size", self.eval_batch_size)
        if self.augment not in AUGMENTS:
            raise ValueError(f"data.augment={self.augment!r} is not valid; choose one of {AUGMENTS}")
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(f"data.crop_padding={self.crop_padding!r} must be an integer >= 0")
        if self.image_size is not None:
            size = [self.image_size] if isinstance(self.image_size, int) else list(self.image_size)
            if len(size) not in (1, 2) or any(not isinstance(s, int) or s < 1 for s in size):
                raise ValueError(f"data.image_size={self.image_size!r} must be an int or [height, width] of ints >= 1")

    @property
    def augment_kind(self) -> str:
        """The augmentation in effect ("auto" resolved for this dataset)."""
        return DEFAULT_AUGMENT[self.name] if self.augment == "auto" else self.augment

    def expected_shape(self, actual: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) the config asks for; unset entries take the actual value."""
        c, h, w = actual
        if self.channels is not None:
            c = self.channels
        if self.image_size is not None:
            h, w = (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)
        return int(c), int(h), int(w)


@dataclass
class VisionOptions(VisionModelOptions):
    """The ``model:`` config section: the backbone's options plus the loss.

    Attributes:
        pool_size: as in VisionModelOptions, but 4 by default here: a classifier over a globally
            averaged single-resolution state learns several times slower (see the model module).
        label_smoothing: cross-entropy label smoothing in training (evaluation loss is plain).
    """

    pool_size: int = 4
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing={self.label_smoothing!r} must be in [0, 1)")


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
        return StepOutput(loss=loss, stats=stats, metrics={"train/acc": float(acc)})

    def evaluate(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        if not isinstance(data, VisionDataBundle):
            raise TypeError(f"evaluate needs the VisionDataBundle that build_data returned, got {type(data).__name__}")
        if split not in data.splits:
            raise ValueError(f"split {split!r} is not valid; choose one of {sorted(data.splits)}")
        x, y = data.splits[split]
        if len(y) == 0:
            raise ValueError(f"the {split} split is empty (data.val_size / data.limit_test)")
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
        correct = torch.zeros((), dtype=torch.int64, device=y.device)
        try:
            with torch.no_grad():
                for xb, yb in iterate_batches(x, y, data.eval_batch_size, shuffle=False):
                    logits, _ = model(normalize(xb, data.mean, data.std))
                    logits = logits.float()
                    loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
                    correct += (logits.argmax(dim=1) == yb).sum()
        finally:
            model.train(was_training)
        n = len(y)
        return {f"{split}/acc": float(correct) / n, f"{split}/loss": float(loss_sum) / n}
