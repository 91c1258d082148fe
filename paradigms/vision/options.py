"""The vision paradigm's ``data:`` and ``model:`` config sections, validated on construction.

:class:`VisionModelOptions` is the backbone's part, which the self-supervised paradigm reuses;
:class:`VisionOptions` adds the classifier's loss options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..base import check_choice, check_int, check_range
from .data import VISION_DATASETS

__all__ = ["AUGMENTS", "DEFAULT_AUGMENT", "STEM_STRIDES", "VisionDataOptions", "VisionModelOptions", "VisionOptions"]

AUGMENTS = ("auto", "none", "flip", "crop", "crop_flip")
# what augment="auto" means per dataset (flips would turn digits into other glyphs)
DEFAULT_AUGMENT = {"cifar10": "crop_flip", "mnist": "none", "fashion-mnist": "none", "digits": "none"}
STEM_STRIDES = (1, 2)


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
        check_choice("data.name", self.name, VISION_DATASETS)
        check_int("data.val_size", self.val_size)
        check_int("data.limit_train", self.limit_train, allow_none=True)
        check_int("data.limit_test", self.limit_test, allow_none=True)
        check_int("data.channels", self.channels, allow_none=True)
        check_int("data.eval_batch_size", self.eval_batch_size)
        check_choice("data.augment", self.augment, AUGMENTS)
        check_int("data.crop_padding", self.crop_padding, 0)
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
class VisionModelOptions:
    """Architecture of the vision backbone (the ``model:`` config section).

    Attributes:
        width: channels C of the state z and of the injected input x.
        expansion: E; the cell's hidden conv has E * C channels (MDEQ uses 5).
        groups: GroupNorm groups; must divide C, E * C and ``feature_channels``.
        dropout: variational dropout probability on the cell's hidden channels (one mask per forward).
        stem_stride: 1 keeps the image resolution; 2 halves it (4x fewer pixels in the block: faster).
        init_scale: multiplies the cells' conv weights after default init (< 1 makes the DEQ map
            start closer to a contraction).
        feature_mult: the backbone maps the block's output through conv1x1 (C -> feature_mult * C)
            -> GroupNorm -> ReLU before pooling (as MDEQ's final layer does); 0 pools z itself (whose
            GroupNorm leaves the channel means of each group summing to a constant: weak features).
            None with ``feature_channels`` set.
        feature_channels: the projection's channels as a number, the same at every width (needs
            ``feature_mult=None``): arms that differ in ``width`` then share the projection's output and
            the head's size, so that only the stem, the cell and the projection's input differ.
        pool_size: the projected features are average-pooled to a pool_size x pool_size grid and
            flattened (out_features = channels * pool_size**2); 1 = global average pooling. A grid
            keeps the spatial layout a single-resolution block cannot summarise by itself.
    """

    width: int = 64
    expansion: int = 5
    groups: int = 4
    dropout: float = 0.0
    stem_stride: int = 1
    init_scale: float = 1.0
    feature_mult: int | None = 4
    feature_channels: int | None = None
    pool_size: int = 1

    def __post_init__(self) -> None:
        for name in ("width", "expansion", "groups", "pool_size"):
            check_int(f"model.{name}", getattr(self, name))
        hidden = self.width * self.expansion
        if self.width % self.groups or hidden % self.groups:
            valid = [g for g in range(1, self.width + 1) if self.width % g == 0 and hidden % g == 0]
            raise ValueError(
                f"model.groups={self.groups} must divide model.width={self.width} and width*expansion={hidden}; "
                f"valid groups: {valid}")
        check_range("model.dropout", self.dropout, 0, 1, high_open=True)
        check_choice("model.stem_stride", self.stem_stride, STEM_STRIDES)
        check_int("model.feature_mult", self.feature_mult, 0, allow_none=True)
        check_int("model.feature_channels", self.feature_channels, allow_none=True)
        if (self.feature_mult is None) == (self.feature_channels is None):
            raise ValueError(
                f"model.feature_mult={self.feature_mult!r} and model.feature_channels={self.feature_channels!r}: "
                "set exactly one (feature_mult scales the projection with the width, feature_channels fixes it; "
                "model.feature_mult=null model.feature_channels=N)")
        if self.feature_channels is not None and self.feature_channels % self.groups:
            raise ValueError(f"model.groups={self.groups} must divide model.feature_channels={self.feature_channels}")
        check_range("model.init_scale", self.init_scale, 0, low_open=True)

    @property
    def hidden(self) -> int:
        """Channels of the cell's hidden conv, E * C."""
        return self.width * self.expansion

    @property
    def projection_channels(self) -> int:
        """Output channels of the feature projection: feature_channels, or feature_mult * width (0: none)."""
        if self.feature_channels is not None:
            return self.feature_channels
        return self.feature_mult * self.width


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
        check_range("model.label_smoothing", self.label_smoothing, 0, 1, high_open=True)
