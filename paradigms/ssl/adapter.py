"""The self-supervised paradigm: pre-train the vision stem + core Block with SimCLR, BYOL or VICReg
(lightly's heads and losses), score the frozen features by weighted kNN and a linear probe.

Data are the vision paradigm's (CIFAR-10, MNIST, Fashion-MNIST, sklearn digits) as device-resident
uint8 tensors. A training batch is a pair of standardised views of the same images, made on the
device by :func:`~tiedlab.paradigms.ssl.views.tensor_views` (or by lightly's PIL transform with
``data.views=lightly``), every random draw from the generator the engine passes; labels never enter
training.

Evaluation on ``split`` ("val" or "test"): the kNN memory bank is the train split (or a fixed seeded
subset of ``data.knn_bank_size`` images), the queries are the split. Reported side by side:
``{split}/knn_acc`` (the primary metric), ``{split}/linear_acc``, the same two for the backbone at its
random initialisation (``*_random_init``) and for raw standardised pixels (``*_pixels``), so a reader
sees what pre-training added. The trained and the random-init backbone are scored on the same features:
``backbone(images)``, the projected block output average-pooled as ``model.pool_size`` says (1, global
pooling, by default: what the SSL loss trains); pixels are the full flattened image.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from tiedlab.core import BlockSpec

from ..base import DataBundle, Paradigm, StepOutput, weights_key
from ..vision.augment import normalize
from ..vision.data import VISION_DATASETS, VisionData, load_vision_data
from ..vision.model import MDEQCell, VisionModelOptions, build_backbone, make_cell
from .evaluation import extract_features, knn_accuracy, linear_probe_accuracy
from .methods import SSL_METHODS, SSLModel, build_ssl_model
from .views import VIEW_BACKENDS, LightlyViews, ViewSpec, tensor_views

__all__ = ["SSLParadigm", "SSLDataOptions", "SSLModelOptions", "SSLDataBundle", "SSL_DEFAULTS"]

# Per-dataset defaults of the options left at None: (horizontal flip probability, colour-jitter strength).
# Flips turn digits into other glyphs; jitter 0.5 is lightly's CIFAR-10 benchmark setting.
SSL_DEFAULTS: dict[str, tuple[float, float]] = {
    "cifar10": (0.5, 0.5), "fashion-mnist": (0.5, 0.5), "mnist": (0.0, 0.5), "digits": (0.0, 0.5)}


def _int_at_least(where: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{where}={value!r} must be {'null or ' if allow_none else ''}an integer >= {low}")


def _prob(where: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}={value!r} must be {'null or ' if allow_none else ''}a number in [0, 1]")


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

    def __post_init__(self) -> None:
        if self.name not in VISION_DATASETS:
            raise ValueError(f"data.name={self.name!r} is not valid; choose one of {VISION_DATASETS}")
        if self.views not in VIEW_BACKENDS:
            raise ValueError(f"data.views={self.views!r} is not valid; choose one of {VIEW_BACKENDS}")
        _int_at_least("data.val_size", self.val_size, 1)
        _int_at_least("data.limit_train", self.limit_train, 1, allow_none=True)
        _int_at_least("data.limit_test", self.limit_test, 1, allow_none=True)
        _int_at_least("data.crop_size", self.crop_size, 1, allow_none=True)
        _int_at_least("data.knn_bank_size", self.knn_bank_size, 1, allow_none=True)
        _int_at_least("data.knn_k", self.knn_k, 1)
        _int_at_least("data.linear_steps", self.linear_steps, 1)
        if not isinstance(self.linear_l2, (int, float)) or self.linear_l2 < 0:
            raise ValueError(f"data.linear_l2={self.linear_l2!r} must be >= 0")
        _int_at_least("data.eval_batch_size", self.eval_batch_size, 1)
        if not isinstance(self.crop_scale_min, (int, float)) or not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"data.crop_scale_min={self.crop_scale_min!r} must be in (0, 1]")
        _prob("data.hflip_prob", self.hflip_prob, allow_none=True)
        _prob("data.jitter_prob", self.jitter_prob)
        _prob("data.gray_prob", self.gray_prob)
        if self.jitter_strength is not None and not 0.0 <= self.jitter_strength <= 2.5:
            raise ValueError(f"data.jitter_strength={self.jitter_strength!r} must be null or in [0, 2.5] "
                             f"(hue strength 0.2 * s must stay <= 0.5)")
        if not self.knn_temperature > 0:
            raise ValueError(f"data.knn_temperature={self.knn_temperature!r} must be > 0")

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
        if self.method not in SSL_METHODS:
            raise ValueError(f"model.method={self.method!r} is not valid; choose one of {SSL_METHODS}")
        _int_at_least("model.proj_hidden", self.proj_hidden, 1)
        _int_at_least("model.proj_dim", self.proj_dim, 1)
        _int_at_least("model.momentum_steps", self.momentum_steps, 1, allow_none=True)
        if not self.temperature > 0:
            raise ValueError(f"model.temperature={self.temperature!r} must be > 0")
        if not 0.0 <= self.momentum_base <= 1.0:
            raise ValueError(f"model.momentum_base={self.momentum_base!r} must be in [0, 1]")


@dataclass
class SSLDataBundle(DataBundle):
    """A DataBundle that also holds what evaluation reads.

    Attributes:
        splits: {"bank" | "val" | "test": (uint8 images (N, C, H, W), int64 labels (N,))} on the device;
            "bank" is the kNN memory bank (train images).
        mean / std: per-channel standardisation in [0, 1] units (from the train split).
        cache: per-split results that do not depend on the model (raw-pixel kNN and probe).
    """

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    num_classes: int = 0
    cache: dict[str, dict[str, float]] = field(default_factory=dict)


def _unwrap(model: nn.Module) -> SSLModel:
    """The SSLModel behind a torch.compile wrapper."""
    core = getattr(model, "_orig_mod", model)
    if not isinstance(core, SSLModel):
        raise TypeError(f"expected the SSLModel that build_model returned, got {type(core).__name__}")
    return core


class SSLParadigm(Paradigm):
    """Self-supervised pre-training (SimCLR / BYOL / VICReg) scored by kNN on frozen features."""

    name = "ssl"
    DataOptions = SSLDataOptions
    ModelOptions = SSLModelOptions
    primary_metric = "knn_acc"
    higher_is_better = True

    # ----------------------------------------------------------------- data
    def build_data(self) -> SSLDataBundle:
        opts: SSLDataOptions = self.data_opts
        if self.batch_size < 2:
            raise ValueError(f"train.batch_size={self.batch_size} is too small for {self.model_opts.method}: "
                             f"self-supervised losses compare views across the batch (SimCLR's negatives are the "
                             f"other images); use train.batch_size >= 2 (>= 64 for useful SimCLR negatives)")
        raw: VisionData = load_vision_data(opts.name, val_size=opts.val_size, seed=opts.split_seed,
                                           download=opts.download, limit_train=opts.limit_train,
                                           limit_test=opts.limit_test)
        c, h, w = raw.image_shape
        spec = opts.view_spec(min(h, w))
        spec.check_fits(raw.image_shape)
        n_train = len(raw.train_y)
        if n_train < self.batch_size:
            raise ValueError(f"train.batch_size={self.batch_size} exceeds the {n_train} training images "
                             f"(data.limit_train={opts.limit_train}); lower the batch size or raise the limit")
        bank_size = n_train if opts.knn_bank_size is None else opts.knn_bank_size
        if bank_size > n_train:
            raise ValueError(f"data.knn_bank_size={bank_size} exceeds the {n_train} training images; "
                             f"choose <= {n_train} or null")
        if opts.knn_k > bank_size:
            raise ValueError(f"data.knn_k={opts.knn_k} exceeds the kNN memory bank of {bank_size} images; "
                             f"choose data.knn_k <= {bank_size}")
        gen = torch.Generator().manual_seed(opts.split_seed * 1_000_003 + 7)
        bank_idx = torch.randperm(n_train, generator=gen)[:bank_size].sort().values
        dev = self.device
        splits = {
            "bank": (raw.train_x.index_select(0, bank_idx).to(dev), raw.train_y.index_select(0, bank_idx).to(dev)),
            "val": (raw.val_x.to(dev), raw.val_y.to(dev)),
            "test": (raw.test_x.to(dev), raw.test_y.to(dev)),
        }
        train_x = raw.train_x.to(dev)
        mean, std = raw.mean, raw.std
        batch_size = self.batch_size
        lightly_views = LightlyViews(spec, mean, std) if opts.views == "lightly" else None

        def train_batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # labels are never read: nothing about them reaches training
            perm = torch.randperm(n_train, generator=generator, device=generator.device).to(dev)
            for i in range(0, n_train - batch_size + 1, batch_size):
                xb = train_x.index_select(0, perm[i:i + batch_size])
                if lightly_views is not None:
                    v0, v1 = lightly_views(xb, generator)
                else:
                    v0, v1 = tensor_views(xb, spec, mean, std, generator)
                yield v0, v1

        meta = {
            "dataset": raw.display_name, "name": raw.name, "image_shape": [c, h, w], "num_classes": raw.num_classes,
            "train_size": n_train, "val_size": len(raw.val_y), "test_size": len(raw.test_y),
            "knn_bank_size": bank_size, "batch_size": batch_size, "views": opts.views, "view_size": spec.size,
            "crop_scale": list(spec.scale), "hflip_prob": spec.hflip_prob, "jitter_strength": spec.brightness / 0.8,
        }
        return SSLDataBundle(
            train_batches=train_batches, steps_per_epoch=n_train // batch_size, samples_per_step=batch_size,
            meta=meta, splits=splits, mean=mean, std=std, num_classes=raw.num_classes)

    # ----------------------------------------------------------------- model
    def cell(self, data: DataBundle) -> MDEQCell:
        return make_cell(self.model_opts)

    def build_model(self, data: DataBundle, spec: BlockSpec) -> SSLModel:
        if not isinstance(data, SSLDataBundle):
            raise TypeError(f"build_model needs the SSLDataBundle that build_data returned, got {type(data).__name__}")
        o: SSLModelOptions = self.model_opts
        backbone = build_backbone(int(data.meta["image_shape"][0]), o, spec, cell_factory=lambda: self.cell(data))
        model = build_ssl_model(o.method, backbone, proj_hidden=o.proj_hidden, proj_dim=o.proj_dim,
                                temperature=o.temperature, momentum_base=o.momentum_base,
                                momentum_steps=o.momentum_steps)
        return model.to(self.device)

    # ----------------------------------------------------------------- step and evaluation
    def training_step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        view0, view1 = batch
        core = _unwrap(model)
        core.bank_cache.clear()  # the weights are about to change (version counters miss e.g. fused optimisers)
        core.before_step()
        loss, stats = model(view0, view1)
        return StepOutput(loss=loss, stats=stats)

    def evaluate(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        if not isinstance(data, SSLDataBundle):
            raise TypeError(f"evaluate needs the SSLDataBundle that build_data returned, got {type(data).__name__}")
        if split not in ("val", "test"):
            raise ValueError(f"split {split!r} is not valid; choose one of ['test', 'val']")
        core = _unwrap(model)
        was_training = core.training
        core.eval()
        try:
            with torch.no_grad():
                out = self._score(core.encode, data, split, "", core.bank_cache, weights_key(core))
                initial = core.initial_backbone
                weights = weights_key(initial)
                cached = core.baseline_cache.get(split)
                if cached is None or cached[0]() is not data or cached[1] != weights:
                    scores = self._score(lambda x: initial(x)[0], data, split, "_random_init", core.bank_cache,
                                         weights)
                    cached = (weakref.ref(data), weights, scores)
                    core.baseline_cache[split] = cached
                out.update(cached[2])
                if split not in data.cache:
                    data.cache[split] = self._score(lambda x: x.flatten(1), data, split, "_pixels")
                out.update(data.cache[split])
        finally:
            core.train(was_training)
        return {f"{split}/{k}": float(v) for k, v in out.items()}

    def _score(self, encode, data: SSLDataBundle, split: str, suffix: str,
               bank_cache: dict[str, tuple] | None = None, weights: tuple = ()) -> dict[str, float]:
        """kNN and linear-probe accuracy of ``encode``'s features, keys ``knn_acc{suffix}``, ``linear_acc{suffix}``.

        With ``bank_cache`` (one entry per suffix), a split scored on the same bundle with unchanged ``weights``
        (:func:`~tiedlab.paradigms.base.weights_key`) reuses the bank's features: val and test of one evaluation
        encode the 10k-image bank once, not twice."""
        opts: SSLDataOptions = self.data_opts
        bank_x, bank_y = data.splits["bank"]
        query_x, query_y = data.splits[split]
        if len(query_y) == 0:
            raise ValueError(f"the {split} split is empty (data.val_size / data.limit_test)")

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return normalize(x, data.mean, data.std)

        cached = bank_cache.get(suffix) if bank_cache is not None else None
        if cached is not None and cached[0]() is data and cached[1] == weights:
            bank = cached[2]
        else:
            bank = extract_features(encode, bank_x, prepare, opts.eval_batch_size)
            if bank_cache is not None:
                bank_cache[suffix] = (weakref.ref(data), weights, bank)
        queries = extract_features(encode, query_x, prepare, opts.eval_batch_size)
        knn = knn_accuracy(bank, bank_y, queries, query_y, data.num_classes, k=opts.knn_k,
                           temperature=opts.knn_temperature, batch_size=opts.eval_batch_size)
        linear = linear_probe_accuracy(bank, bank_y, queries, query_y, data.num_classes,
                                       steps=opts.linear_steps, l2=float(opts.linear_l2))
        return {f"knn_acc{suffix}": knn, f"linear_acc{suffix}": linear}
