"""The self-supervised paradigm: pre-train the vision stem + core Block with SimCLR, BYOL or VICReg
(lightly's heads and losses), score the frozen features by weighted kNN and a linear probe.

Data are the vision paradigm's (CIFAR-10, MNIST, Fashion-MNIST, sklearn digits) as device-resident
uint8 tensors. A training batch is a pair of standardised views of the same images, made on the
device by :func:`~tiedlab.paradigms.ssl.views.tensor_views` (or by lightly's PIL transform with
``data.views=lightly``), every random draw from the generator the engine passes; labels never enter
training.

Evaluation on ``split`` ("val" or "test"): the kNN memory bank is the train split (or a fixed seeded
subset of ``data.knn_bank_size`` images), the queries are the split; only the queries' forwards are on the record
(the engine's ``core/{split}_*`` statistics and DEQ equilibrium probe: :func:`~tiedlab.paradigms.base.off_the_record`).
Reported side by side:
``{split}/knn_acc`` (the primary metric), ``{split}/linear_acc``, the same two for the backbone at its
random initialisation (``*_random_init``; ``data.random_init_baseline=false`` leaves them out) and for raw
standardised pixels (``*_pixels``), so a reader
sees what pre-training added. The trained and the random-init backbone are scored on the same features:
``backbone(images)``, the projected block output average-pooled as ``model.pool_size`` says (1, global
pooling, by default: what the SSL loss trains); pixels are the full flattened image. Split "train"
(``train.score_train``, recorded as ``fit/loss``) is the method's own loss on the bank's training images, two
views per image drawn from one fixed seed, the heads' BatchNorm normalising by batch statistics as in training
(the objective the run minimised): how well the weights fit their objective, the capacity measure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from tiedlab.core import BlockSpec

from ..base import DataBundle, Paradigm, StepOutput, WeightsCache, off_the_record, unwrap, weights_key
from ..vision.augment import normalize
from ..vision.data import VisionData, load_vision_data
from ..vision.model import MDEQCell, build_backbone, make_cell
from .evaluation import extract_features, knn_accuracy, linear_probe_accuracy
from .methods import SSLModel, build_ssl_model
from .options import SSL_DEFAULTS, SSLDataOptions, SSLModelOptions
from .views import LightlyViews, tensor_views

__all__ = ["SSLParadigm", "SSLDataOptions", "SSLModelOptions", "SSLDataBundle", "SSL_DEFAULTS"]


@dataclass
class SSLDataBundle(DataBundle):
    """A DataBundle that also holds what evaluation reads.

    Attributes:
        splits: {"bank" | "val" | "test": (uint8 images (N, C, H, W), int64 labels (N,))} on the device;
            "bank" is the kNN memory bank (train images).
        mean / std: per-channel standardisation in [0, 1] units (from the train split).
        cache: per-split results that do not depend on the model (raw-pixel kNN and probe).
        views: the training augmentation, (uint8 images (B, C, H, W), generator) -> two normalised views.
    """

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    num_classes: int = 0
    cache: dict[str, dict[str, float]] = field(default_factory=dict)
    views: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None


FIT_VIEWS_SEED = 20_231_307  # the augmentation draws of the training-split fit (the same for every run)


class SSLParadigm(Paradigm):
    """Self-supervised pre-training (SimCLR / BYOL / VICReg) scored by kNN on frozen features."""

    name = "ssl"
    DataOptions = SSLDataOptions
    ModelOptions = SSLModelOptions
    primary_metric = "knn_acc"
    higher_is_better = True
    data_parallel = ("its losses compare the samples of a batch (SimCLR's negatives, VICReg's variance and "
                     "covariance, BatchNorm in the projection heads), so a slice's gradient is not a share of the "
                     "batch's (that needs the embeddings gathered across processes, not done)")
    seed_batch = ("a step updates state outside the parameters (the momentum target, the feature caches) in place, "
                  "which a vmap over stacked parameters would share between the seeds")
    scores_train = True  # the method's loss on the kNN bank's training images, two views with fixed draws

    @classmethod
    def unread_options(cls, data: Any, model: Any) -> dict[str, str]:
        """The options of the other methods: model.temperature (SimCLR's), model.momentum_* (BYOL's)."""
        method = (model or {}).get("method")
        out = {}
        if method != "simclr":
            out["model.temperature"] = f"model.method={method} has no NT-Xent temperature (simclr only)"
        if method != "byol":
            for key in ("model.momentum_base", "model.momentum_steps"):
                out[key] = f"model.method={method} has no momentum target (byol only)"
        return out

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
        bank_idx = torch.randperm(n_train, generator=gen)[:bank_size]
        # The bank's order is the order fit/loss cuts its batches in: never the source's (the CIFAR-10 copy is
        # grouped by class, which made most batches one class). data.limit_train's split is a seeded shuffle
        # already, and there the bank keeps its sorted order (earlier commits' runs score the same batches).
        if opts.limit_train is not None:
            bank_idx = bank_idx.sort().values
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

        def views(xb: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return lightly_views(xb, generator) if lightly_views is not None else \
                tensor_views(xb, spec, mean, std, generator)

        def train_batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # labels are never read: nothing about them reaches training
            perm = torch.randperm(n_train, generator=generator, device=generator.device).to(dev)
            for i in range(0, n_train - batch_size + 1, batch_size):
                yield views(train_x.index_select(0, perm[i:i + batch_size]), generator)

        meta = {
            "dataset": raw.display_name, "name": raw.name, "image_shape": [c, h, w], "num_classes": raw.num_classes,
            "train_size": n_train, "val_size": len(raw.val_y), "test_size": len(raw.test_y),
            "knn_bank_size": bank_size, "batch_size": batch_size, "views": opts.views, "view_size": spec.size,
            "crop_scale": list(spec.scale), "hflip_prob": spec.hflip_prob, "jitter_strength": spec.brightness / 0.8,
        }
        return SSLDataBundle(
            train_batches=train_batches, steps_per_epoch=n_train // batch_size, samples_per_step=batch_size,
            meta=meta, splits=splits, mean=mean, std=std, num_classes=raw.num_classes, views=views)

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
        core = unwrap(model, SSLModel)
        core.bank_cache.clear()  # the weights are about to change (version counters miss e.g. fused optimisers)
        core.before_step()
        loss, stats = model(view0, view1)
        return StepOutput(loss=loss, stats=stats)

    def score(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        if not isinstance(data, SSLDataBundle):
            raise TypeError(f"evaluate needs the SSLDataBundle that build_data returned, got {type(data).__name__}")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split {split!r} is not valid; choose one of ['test', 'train', 'val']")
        core = unwrap(model, SSLModel)
        if split == "train":
            return {"train/loss": self._fit_loss(model, core, data)}
        out = self._knn_and_probe(core.encode, data, split, "", core.bank_cache, weights_key(core))
        if self.data_opts.random_init_baseline:
            initial = core.initial_backbone
            weights = core.initial_key()  # by content: once per split and run, however often the state is reloaded
            with off_the_record():  # the initial backbone's forwards are not the scored model's
                out.update(core.baseline_cache.get(split, data, weights, lambda: self._knn_and_probe(
                    lambda x: initial(x)[0], data, split, "_random_init", core.bank_cache, weights)))
        if split not in data.cache:
            data.cache[split] = self._knn_and_probe(lambda x: x.flatten(1), data, split, "_pixels")
        out.update(data.cache[split])
        return {f"{split}/{k}": float(v) for k, v in out.items()}

    def _fit_loss(self, model: nn.Module, core: SSLModel, data: SSLDataBundle) -> float:
        """The method's loss on the kNN bank's training images (batches of train.batch_size, the last partial one
        dropped), each batch's two views drawn from one fixed seed, so every run and evaluation sees the same
        pairs: how well the weights fit their training objective (capacity). It is that objective as a training step
        computes it: every BatchNorm (the heads', a BYOL target's) normalises by the batch's statistics
        (:meth:`SSLModel.batch_statistics`), not by its running ones; the rest of the model stays in eval mode
        (no dropout; a block's eval budgets) and no gradient is taken. Whatever the forward changes outside the
        parameters (the BatchNorm running statistics, the extra state) is put back.

        Raises:
            ValueError: the bank holds fewer images than one batch.
        """
        bank_x = data.splits["bank"][0]
        size = self.batch_size
        if len(bank_x) < size:
            raise ValueError(f"the kNN bank's {len(bank_x)} images are fewer than one batch ({size}): raise "
                             "data.knn_bank_size to score the training split")
        kept = copy.deepcopy(core.state_dict())
        core.sync_hidden()  # a BYOL target unrolls as the online blocks do now
        generator = torch.Generator(device=bank_x.device).manual_seed(FIT_VIEWS_SEED)
        total, batches = 0.0, 0
        try:
            with core.batch_statistics(), torch.no_grad():
                for i in range(0, len(bank_x) - size + 1, size):
                    loss, _ = model(*data.views(bank_x[i:i + size], generator))
                    total, batches = total + float(loss), batches + 1
        finally:
            core.load_state_dict(kept)
        return total / batches

    def _knn_and_probe(self, encode, data: SSLDataBundle, split: str, suffix: str,
                       bank_cache: WeightsCache | None = None, weights: tuple = ()) -> dict[str, float]:
        """kNN and linear-probe accuracy of ``encode``'s features, keys ``knn_acc{suffix}``, ``linear_acc{suffix}``.

        With ``bank_cache`` (one slot per suffix), a split scored on the same bundle with unchanged ``weights``
        (:func:`~tiedlab.paradigms.base.weights_key`) reuses the bank's features: val and test of one evaluation
        encode the 10k-image bank once, not twice. The bank (training images, also the linear probe's training
        features) is encoded :func:`~tiedlab.paradigms.base.off_the_record`: the engine's block statistics and
        equilibrium probe see ``split``'s forwards alone."""
        opts: SSLDataOptions = self.data_opts
        bank_x, bank_y = data.splits["bank"]
        query_x, query_y = data.splits[split]
        if len(query_y) == 0:
            raise ValueError(f"the {split} split is empty (data.val_size / data.limit_test)")

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return normalize(x, data.mean, data.std)

        def encode_bank() -> torch.Tensor:
            with off_the_record():
                return extract_features(encode, bank_x, prepare, opts.eval_batch_size)

        bank = encode_bank() if bank_cache is None else bank_cache.get(suffix, data, weights, encode_bank)
        queries = extract_features(encode, query_x, prepare, opts.eval_batch_size)
        knn = knn_accuracy(bank, bank_y, queries, query_y, data.num_classes, k=opts.knn_k,
                           temperature=opts.knn_temperature, batch_size=opts.eval_batch_size)
        linear = linear_probe_accuracy(bank, bank_y, queries, query_y, data.num_classes,
                                       steps=opts.linear_steps, l2=float(opts.linear_l2))
        return {f"knn_acc{suffix}": knn, f"linear_acc{suffix}": linear}
