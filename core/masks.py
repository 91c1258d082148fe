"""Sparse masks over a cell's weights and the masked functional call.

A mask is a fixed 0/1 tensor drawn once from a seed and kept as a buffer. Layer i of a masked block
runs the one shared cell with every masked weight W replaced by W * M_i, through
``torch.func.functional_call``: any cell works unchanged and the gradient of every use reaches W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

MASK_KINDS = ("unstructured", "nm", "channel")
MASK_MODES = ("none", "shared", "distinct")


def unstructured_mask(shape: torch.Size, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """A mask with exactly round(sparsity * numel) zeros at random places.

    Shapes: -> (*shape) float 0/1
    """
    n = int(torch.Size(shape).numel())
    zeros = round(sparsity * n)
    flat = torch.ones(n)
    flat[torch.randperm(n, generator=generator)[:zeros]] = 0.0
    return flat.view(shape)


def nm_mask(shape: torch.Size, n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """An N:M mask: in every group of m consecutive weights along the input dimension, n are kept.

    The weight is viewed as (out, rest) with rest = numel / out, which must be divisible by m.

    Shapes: -> (*shape) float 0/1
    """
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
    out = shape[0]
    rest = int(torch.Size(shape[1:]).numel())
    if rest % m != 0:
        raise ValueError(
            f"N:M with m={m} does not divide the tensor of shape {tuple(shape)}: its input size {rest} is not "
            f"a multiple of {m}; choose an m that divides it or mask.kind='unstructured'")
    groups = out * rest // m
    keep = torch.rand(groups, m, generator=generator).argsort(dim=1)[:, :n]
    mask = torch.zeros(groups, m)
    mask.scatter_(1, keep, 1.0)
    return mask.view(shape)


def channel_mask(shape: torch.Size, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """A mask that zeros round(sparsity * out) whole output channels (dim 0).

    Shapes: -> (*shape) float 0/1
    """
    out = shape[0]
    zeros = round(sparsity * out)
    if zeros >= out:
        raise ValueError(f"sparsity={sparsity} would zero all {out} output channels of a tensor of shape {tuple(shape)}")
    keep = torch.ones(out)
    keep[torch.randperm(out, generator=generator)[:zeros]] = 0.0
    return keep.view(-1, *([1] * (len(shape) - 1))).expand(shape).contiguous()


@dataclass(frozen=True)
class MaskSpec:
    """Which masks a block draws.

    Attributes:
        mode: "none", "shared" (one mask used at every layer) or "distinct" (one mask per layer).
        kind: "unstructured", "nm" or "channel".
        sparsity: fraction of zeros in [0, 1); for kind "nm" it is 1 - n/m and may be left at 0.
        n, m: the N:M pattern (n kept in every m), used by kind "nm".
        seed: seeds the masks; independent of the global RNG.
        min_dim: only weights with at least this many dims are masked (2: not biases or norms).
    """

    mode: str = "none"
    kind: str = "unstructured"
    sparsity: float = 0.0
    n: int = 2
    m: int = 4
    seed: int = 0
    min_dim: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ValueError(f"mask mode {self.mode!r} is not valid; choose one of {MASK_MODES}")
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask kind {self.kind!r} is not valid; choose one of {MASK_KINDS}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"mask sparsity={self.sparsity} must be in [0, 1)")
        if self.kind == "nm":
            if not 0 < self.n < self.m:
                raise ValueError(f"N:M needs 0 < n < m, got n={self.n}, m={self.m}")
            implied = 1.0 - self.n / self.m
            if self.sparsity not in (0.0, implied) and abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"mask sparsity={self.sparsity} contradicts N:M {self.n}:{self.m} (sparsity {implied:g}); "
                    "set sparsity to 0 or to 1 - n/m")
        if self.min_dim < 1:
            raise ValueError(f"mask min_dim={self.min_dim} must be >= 1")

    @property
    def active(self) -> bool:
        """Whether any weight is masked at all."""
        if self.mode == "none":
            return False
        return self.kind == "nm" or self.sparsity > 0.0

    @property
    def effective_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.kind == "nm" else self.sparsity

    def draw(self, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """One mask of this spec for a tensor of ``shape``."""
        if self.kind == "unstructured":
            return unstructured_mask(shape, self.sparsity, generator)
        if self.kind == "nm":
            return nm_mask(shape, self.n, self.m, generator)
        return channel_mask(shape, self.sparsity, generator)


def maskable_weights(cell: nn.Module, min_dim: int = 2) -> dict[str, torch.Tensor]:
    """The cell's parameters with at least ``min_dim`` dims, by the names functional_call takes."""
    return {name: p for name, p in cell.named_parameters() if p.dim() >= min_dim}


class MaskSet(nn.Module):
    """The masks of one block: ``num_masks`` masks for each maskable weight of a cell, as buffers.

    ``shared`` draws one mask per weight (num_masks == 1); ``distinct`` draws one per layer.
    Buffers are named ``m{i}__{weight name with dots as underscores}``.
    """

    def __init__(self, cell: nn.Module, spec: MaskSpec, num_masks: int):
        super().__init__()
        self.spec = spec
        self.num_masks = 1 if spec.mode == "shared" else num_masks
        self.names: list[str] = []
        if not spec.active:
            self.num_masks = 0
            return
        weights = maskable_weights(cell, spec.min_dim)
        if not weights:
            raise ValueError(f"masking was asked for but the cell has no weight with dim >= {spec.min_dim}")
        self.names = sorted(weights)
        generator = torch.Generator().manual_seed(spec.seed)
        for i in range(self.num_masks):
            for name in self.names:
                w = weights[name]
                self.register_buffer(self._key(i, name), spec.draw(w.shape, generator).to(w.dtype), persistent=True)

    @staticmethod
    def _key(i: int, name: str) -> str:
        return f"m{i}__{name.replace('.', '_')}"

    def mask(self, layer: int, name: str) -> torch.Tensor:
        """The mask layer ``layer`` applies to weight ``name`` (layers past num_masks wrap around)."""
        return getattr(self, self._key(layer % self.num_masks, name))

    def apply(self, weights: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
        """{name: W * M_layer} for every masked weight name; ``weights`` maps names to the W to use."""
        return {name: weights[name] * self.mask(layer, name) for name in self.names}

    def zero_fraction(self) -> float:
        """Mean fraction of zeros over all masks and masked weights."""
        if not self.num_masks:
            return 0.0
        zeros = total = 0
        for i in range(self.num_masks):
            for name in self.names:
                m = self.mask(i, name)
                zeros += int((m == 0).sum())
                total += m.numel()
        return zeros / total


def masked_call(cell: nn.Module, weights: dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
    """Call ``cell(*args, **kwargs)`` with the given weights standing in for its own."""
    if not weights:
        return cell(*args, **kwargs)
    return functional_call(cell, weights, args, kwargs, strict=False)
