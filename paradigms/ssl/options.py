"""The self-supervised paradigm's ``data:`` and ``model:`` config sections, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import check_choice, check_int, check_range
from ..vision.data import VISION_DATASETS
from ..vision.options import VisionModelOptions
from .methods import SSL_METHODS
from .views import VIEW_BACKENDS, ViewSpec

__all__ = ["SSL_DEFAULTS", "SSLDataOptions", "SSLModelOptions"]

# Per-dataset defaults of the options left at None: (horizontal flip probability, colour-jitter strength).
# Flips turn digits into other glyphs; jitter 0.5 is lightly's CIFAR-10 benchmark setting.
SSL_DEFAULTS: dict[str, tuple[float, float]] = {
    "cifar10": (0.5, 0.5), "fashion-mnist": (0.5, 0.5), "mnist": (0.0, 0.5), "digits": (0.0, 0.5)}


@dataclass
class SSLDataOptions:
    """The ``data:`` config section.

    Attributes:
        name: dataset, one of ``VISION_DATASETS``.
        val_size: images held out of the official train split as the "val" queries (>= 1).
        split_seed: seeds the validation split, ``limit_*`` shuffles and the kNN bank subset.
        limit_train / limit_test: keep N images (quick runs and tests); None = all.
        download: let torchvision download a missing dataset into the cache.
        views: "tensor" (batched on the training device) or "lightly" (lightly's PIL SimCLRTransform).
        crop_size: side of the square views; None = the image side. Larger than the image is an error.
        crop_scale_min: smallest crop area as a fraction of the image (lightly's ``min_scale``).
        hflip_prob: horizontal flip probability; None = dataset default (0.5, 0 for MNIST and digits).
        jitter_strength: colour-jitter strength s (brightness, contrast, saturation 0.8 s, hue 0.2 s, as
            lightly's ``cj_strength``); None = dataset default (0.5); 0 turns jitter off.
        jitter_prob: probability that colour jitter is applied.
        gray_prob: probability of grayscale (RGB data only).
        knn_bank_size: train images in the kNN memory bank (a fixed seeded subset); None = all.
        knn_k / knn_temperature: the weighted kNN (lightly's benchmarks: 200 and 0.1).
        linear_steps / linear_l2: L-BFGS iterations and L2 weight of the logistic-regression probe
            fitted on the frozen bank features.
        eval_batch_size: batch size of feature extraction.
        random_init_baseline: also score the backbone at its random initialisation (``*_random_init`` keys, once
            per split and run: as dear as scoring the trained backbone once, a DEQ's most of all); false leaves
            those keys out of the record (the raw-pixel baseline is always scored: it is cheap).
    """

    name: str = "cifar10"
    val_size: int = 5000
    split_seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    download: bool = False
    views: str = "tensor"
    crop_size: int | None = None
    crop_scale_min: float = 0.08
    hflip_prob: float | None = None
    jitter_strength: float | None = None
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    knn_bank_size: int | None = None
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_steps: int = 100
    linear_l2: float = 1e-4
    eval_batch_size: int = 1000
    random_init_baseline: bool = True

    def __post_init__(self) -> None:
        check_choice("data.name", self.name, VISION_DATASETS)
        check_choice("data.views", self.views, VIEW_BACKENDS)
        check_int("data.val_size", self.val_size)
        check_int("data.limit_train", self.limit_train, allow_none=True)
        check_int("data.limit_test", self.limit_test, allow_none=True)
        check_int("data.crop_size", self.crop_size, allow_none=True)
        check_int("data.knn_bank_size", self.knn_bank_size, allow_none=True)
        check_int("data.knn_k", self.knn_k)
        check_int("data.linear_steps", self.linear_steps)
        check_range("data.linear_l2", self.linear_l2, 0)
        check_int("data.eval_batch_size", self.eval_batch_size)
        if not isinstance(self.random_init_baseline, bool):
            raise ValueError(f"data.random_init_baseline={self.random_init_baseline!r} is not valid; choose one of "
                             "[True, False]")
        check_range("data.crop_scale_min", self.crop_scale_min, 0, 1, low_open=True)
        check_range("data.hflip_prob", self.hflip_prob, 0, 1, allow_none=True)
        check_range("data.jitter_prob", self.jitter_prob, 0, 1)
        check_range("data.gray_prob", self.gray_prob, 0, 1)
        check_range("data.jitter_strength", self.jitter_strength, 0, 2.5, allow_none=True)  # hue 0.2 * s <= 0.5
        check_range("data.knn_temperature", self.knn_temperature, 0, low_open=True)

    def view_spec(self, image_side: int) -> ViewSpec:
        """The view augmentation for images whose smaller side is ``image_side``."""
        flip, strength = SSL_DEFAULTS[self.name]
        flip = flip if self.hflip_prob is None else float(self.hflip_prob)
        strength = strength if self.jitter_strength is None else float(self.jitter_strength)
        return ViewSpec(
            size=self.crop_size if self.crop_size is not None else image_side,
            scale=(float(self.crop_scale_min), 1.0), hflip_prob=flip, jitter_prob=float(self.jitter_prob),
            brightness=0.8 * strength, contrast=0.8 * strength, saturation=0.8 * strength, hue=0.2 * strength,
            gray_prob=float(self.gray_prob))


@dataclass
class SSLModelOptions(VisionModelOptions):
    """The ``model:`` config section: the vision backbone's options plus the method.

    Attributes:
        method: "simclr", "byol" or "vicreg".
        proj_hidden / proj_dim: hidden and output width of the projection (and BYOL prediction) heads.
        temperature: NT-Xent temperature (SimCLR).
        momentum_base / momentum_steps: BYOL's target EMA momentum rises from ``momentum_base`` to 1 on a
            cosine over ``momentum_steps`` training steps (set it to the run's ``train.max_steps``);
            None keeps it at ``momentum_base``.
    """

    method: str = "simclr"
    proj_hidden: int = 512
    proj_dim: int = 128
    temperature: float = 0.5
    momentum_base: float = 0.99
    momentum_steps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("model.method", self.method, SSL_METHODS)
        check_int("model.proj_hidden", self.proj_hidden)
        check_int("model.proj_dim", self.proj_dim)
        check_int("model.momentum_steps", self.momentum_steps, allow_none=True)
        check_range("model.temperature", self.temperature, 0, low_open=True)
        check_range("model.momentum_base", self.momentum_base, 0, 1)
