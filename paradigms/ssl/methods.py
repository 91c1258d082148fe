"""Self-supervised methods over a VisionBackbone, assembled from lightly's heads and losses.

- :class:`SimCLR`: ``SimCLRProjectionHead`` + ``NTXentLoss`` (the other views of the batch are the negatives).
- :class:`BYOL`: ``BYOLProjectionHead`` + ``BYOLPredictionHead`` online, a momentum copy of backbone and
  projection head as the target (``deactivate_requires_grad``, ``update_momentum`` with a
  ``cosine_schedule`` from ``momentum_base`` to 1), loss ``2 - 2 cos`` symmetrised (BYOL's normalised
  MSE, through ``NegativeCosineSimilarity``).
- :class:`VICReg`: ``VICRegProjectionHead`` + ``VICRegLoss``.

Every model's ``forward(view0, view1) -> (loss, BlockStats)`` runs the backbone ONCE on the two views
concatenated (its GroupNorm is per sample, so this equals two calls) and the heads per view (their
BatchNorm sees one view at a time, as in lightly's examples); BYOL's target, backbone and projection head,
runs once per view, so its BatchNorm too sees one view at a time. ``encode(images)`` gives the frozen
features evaluation uses.

Modules that are not trained live outside the module tree (``self.hidden``): the BYOL target and a
frozen copy of the backbone's initial weights (the random-initialisation baseline). So the model's
``parameters()`` are exactly the trained ones, ``modules()`` holds exactly one core Block (the engine
counts parameters and records block statistics from it), yet ``.to()`` moves them and
``state_dict()`` saves them (as the model's extra state), so a resumed run is exact. What the engine sets
on the model's blocks (a DEQ warm-up's ``warmup_depth``) reaches the target's blocks through
:meth:`SSLModel.sync_hidden`, which runs before every loss forward.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from tiedlab.core import Block, BlockStats
from tiedlab.paradigms.base import WeightsCache, weights_key
from tiedlab.paradigms.vision.model import VisionBackbone

__all__ = ["SSL_METHODS", "SSLModel", "SimCLR", "BYOL", "VICReg", "build_ssl_model", "MomentumEncoder"]

SSL_METHODS = ("simclr", "byol", "vicreg")


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _blocks(module: nn.Module) -> list[Block]:
    return [m for m in module.modules() if isinstance(m, Block)]


def content_digest(module: nn.Module) -> str:
    """A SHA-256 of ``module``'s state dict (every tensor's name, dtype, shape and bytes): equal for equal weights
    however often they were reloaded, unlike :func:`~tiedlab.paradigms.base.weights_key`."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class MomentumEncoder(nn.Module):
    """The BYOL target: copies of the online backbone and projection head, updated only by EMA.

    Shapes: images (B, C, H, W) -> projections (B, proj_dim)
    """

    def __init__(self, backbone: VisionBackbone, projection_head: nn.Module):
        super().__init__()
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = copy.deepcopy(backbone)
        self.projection_head = copy.deepcopy(projection_head)
        deactivate_requires_grad(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, _ = self.backbone(images)
        return self.projection_head(features)


class SSLModel(nn.Module):
    """Backbone + a method's heads and loss. Subclasses implement ``loss_from_features``.

    Args:
        backbone: the VisionBackbone (stem + the one core Block + pooling) being pre-trained.

    Shapes: forward: view0, view1 (B, C, H, W) normalised -> (scalar loss, BlockStats);
        encode: images (B, C, H, W) -> (B, backbone.out_features)
    """

    method: str = ""

    def __init__(self, backbone: VisionBackbone):
        super().__init__()
        self.backbone = backbone
        initial = copy.deepcopy(backbone)
        for p in initial.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "hidden", {"initial_backbone": initial.eval()})
        # evaluation results of the initial backbone, one slot per split, keyed by initial_key()
        object.__setattr__(self, "baseline_cache", WeightsCache())
        # the latest memory-bank features of each encoder (see the SSL adapter's evaluate)
        object.__setattr__(self, "bank_cache", WeightsCache())
        self._initial_digest: tuple[tuple, str] | None = None  # (weights_key, content_digest) of the initial backbone

    # ---------------------------------------------------------------- modules kept outside the tree
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "SSLModel":
        super()._apply(fn, recurse)
        for module in self.hidden.values():
            module._apply(fn, recurse)
        return self

    def get_extra_state(self) -> dict[str, Any]:
        return {name: module.state_dict() for name, module in self.hidden.items()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.hidden) - set(state))
        if missing:
            raise ValueError(f"{type(self).__name__} state lacks {missing}; it holds {sorted(state)}")
        for name, module in self.hidden.items():
            module.load_state_dict(state[name])

    @property
    def initial_backbone(self) -> VisionBackbone:
        """A frozen copy of the backbone as initialised (for the random-init kNN baseline), in eval mode."""
        return self.hidden["initial_backbone"]

    def initial_key(self) -> tuple[str]:
        """The key of the random-init baseline's caches: the initial backbone's :func:`content_digest`. Reloading
        the same weights keeps it (the engine's probes reload the extra state after each measurement, which moves
        every version counter); loading other initial weights (another run's state dict) changes it. Hashed again
        only when the backbone's :func:`~tiedlab.paradigms.base.weights_key` moved."""
        initial = self.initial_backbone
        now = weights_key(initial)
        if self._initial_digest is None or self._initial_digest[0] != now:
            self._initial_digest = (now, content_digest(initial))
        return (self._initial_digest[1],)

    @contextlib.contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Every BatchNorm module of the model and of the modules kept outside its tree (a BYOL target) in train
        mode, so it normalises by the batch's statistics as a training step does; every other module keeps its
        mode (dropout stays off, a block keeps its eval budgets). Modes restored on exit; the running statistics a
        forward updates meanwhile are the caller's to restore."""
        roots = (self, *self.hidden.values())
        norms = [m for root in roots for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        modes = [m.training for m in norms]
        try:
            for m in norms:
                m.train()
            yield
        finally:
            for m, mode in zip(norms, modes):
                m.train(mode)

    # ---------------------------------------------------------------- forward
    def sync_hidden(self) -> None:
        """Make the modules kept outside the tree run as the online ones do now (BYOL: see its override); called
        before every loss forward (by ``before_step`` and by the adapter's training-split fit)."""

    def before_step(self) -> None:
        """Called by the training step before every forward (BYOL updates its target here)."""
        self.sync_hidden()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen features of the current backbone. Shapes: (B, C, H, W) -> (B, D)"""
        return self.backbone(images)[0]

    def forward(self, view0: torch.Tensor, view1: torch.Tensor) -> tuple[torch.Tensor, BlockStats]:
        if view0.shape != view1.shape:
            raise ValueError(f"the two views differ in shape: {tuple(view0.shape)} vs {tuple(view1.shape)}")
        if view0.shape[0] < 2:
            raise ValueError(f"{self.method} needs a batch of at least 2 images, got {view0.shape[0]}")
        features, stats = self.backbone(torch.cat([view0, view1]))
        f0, f1 = features.chunk(2)
        return self.loss_from_features(f0, f1, view0, view1), stats

    def loss_from_features(self, f0: torch.Tensor, f1: torch.Tensor, view0: torch.Tensor,
                           view1: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SimCLR(SSLModel):
    """SimCLR: NT-Xent between the projections of the two views; the batch's other 2B - 2 views are negatives."""

    method = "simclr"

    def __init__(self, backbone: VisionBackbone, proj_hidden: int, proj_dim: int, temperature: float):
        super().__init__(backbone)
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.projection_head = SimCLRProjectionHead(backbone.out_features, proj_hidden, proj_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def loss_from_features(self, f0: torch.Tensor, f1: torch.Tensor, view0: torch.Tensor,
                           view1: torch.Tensor) -> torch.Tensor:
        z0, z1 = self.projection_head(f0), self.projection_head(f1)
        with _no_autocast(z0.device):
            return self.criterion(z0.float(), z1.float())


class BYOL(SSLModel):
    """BYOL: the online prediction of each view regresses the target projection of the other view.

    The target (``hidden["momentum"]``) runs in train mode under no_grad and is moved towards the
    online weights before every step with momentum ``cosine_schedule(step, momentum_steps,
    momentum_base, 1.0)`` (constant ``momentum_base`` when ``momentum_steps`` is None). The step
    counter is a buffer, so it is checkpointed.
    """

    method = "byol"

    def __init__(self, backbone: VisionBackbone, proj_hidden: int, proj_dim: int, momentum_base: float,
                 momentum_steps: int | None):
        super().__init__(backbone)
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        self.projection_head = BYOLProjectionHead(backbone.out_features, proj_hidden, proj_dim)
        self.prediction_head = BYOLPredictionHead(proj_dim, proj_hidden, proj_dim)
        self.criterion = NegativeCosineSimilarity()
        self.momentum_base = float(momentum_base)
        self.momentum_steps = momentum_steps
        self.register_buffer("momentum_step", torch.zeros((), dtype=torch.long))
        self.hidden["momentum"] = MomentumEncoder(backbone, self.projection_head).train()

    @property
    def target(self) -> MomentumEncoder:
        return self.hidden["momentum"]

    def momentum_at(self, step: int) -> float:
        """The EMA momentum used at training step ``step`` (0-based)."""
        from lightly.utils.scheduler import cosine_schedule

        if self.momentum_steps is None:
            return self.momentum_base
        return float(cosine_schedule(min(step, self.momentum_steps), self.momentum_steps, self.momentum_base, 1.0))

    def sync_hidden(self) -> None:
        """The target's blocks unroll as the online ones do: each takes its online twin's ``warmup_depth`` (the
        engine sets it on the model's blocks during a DEQ warm-up; the target is outside the tree).

        Raises:
            ValueError: the target and the online backbone hold different numbers of blocks.
        """
        online, target = _blocks(self.backbone), _blocks(self.target.backbone)
        if len(online) != len(target):
            raise ValueError(f"the BYOL target holds {len(target)} blocks, the online backbone {len(online)}")
        for mine, theirs in zip(online, target):
            theirs.warmup_depth = mine.warmup_depth

    @torch.no_grad()
    def before_step(self) -> None:
        from lightly.models.utils import update_momentum

        self.sync_hidden()
        m = self.momentum_at(int(self.momentum_step))
        update_momentum(self.backbone, self.target.backbone, m=m)
        update_momentum(self.projection_head, self.target.projection_head, m=m)
        self.momentum_step += 1

    def loss_from_features(self, f0: torch.Tensor, f1: torch.Tensor, view0: torch.Tensor,
                           view1: torch.Tensor) -> torch.Tensor:
        p0 = self.prediction_head(self.projection_head(f0))
        p1 = self.prediction_head(self.projection_head(f1))
        with torch.no_grad():
            t0, t1 = self.target(view0), self.target(view1)  # one view per call: its BatchNorm sees one view
        with _no_autocast(p0.device):
            return 2.0 + self.criterion(p0.float(), t1.float()) + self.criterion(p1.float(), t0.float())


class VICReg(SSLModel):
    """VICReg: invariance + variance + covariance terms (lightly's default weights 25 / 25 / 1)."""

    method = "vicreg"

    def __init__(self, backbone: VisionBackbone, proj_hidden: int, proj_dim: int):
        super().__init__(backbone)
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead

        self.projection_head = VICRegProjectionHead(backbone.out_features, proj_hidden, proj_dim, num_layers=2)
        self.criterion = VICRegLoss()

    def loss_from_features(self, f0: torch.Tensor, f1: torch.Tensor, view0: torch.Tensor,
                           view1: torch.Tensor) -> torch.Tensor:
        z0, z1 = self.projection_head(f0), self.projection_head(f1)
        with _no_autocast(z0.device):
            return self.criterion(z0.float(), z1.float())


def build_ssl_model(method: str, backbone: VisionBackbone, *, proj_hidden: int, proj_dim: int, temperature: float,
                    momentum_base: float, momentum_steps: int | None) -> SSLModel:
    """The SSL model for ``method`` (one of SSL_METHODS) around ``backbone``."""
    if method == "simclr":
        return SimCLR(backbone, proj_hidden, proj_dim, temperature)
    if method == "byol":
        return BYOL(backbone, proj_hidden, proj_dim, momentum_base, momentum_steps)
    if method == "vicreg":
        return VICReg(backbone, proj_hidden, proj_dim)
    raise ValueError(f"model.method={method!r} is not valid; choose one of {SSL_METHODS}")
