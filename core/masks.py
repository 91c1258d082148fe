"""Sparse masks over a cell's weights and the masked functional call.

A mask is a fixed 0/1 tensor drawn once from a seed and kept as a buffer. Layer i of a masked block
runs the one shared cell with every masked weight W replaced by W * M_i (times 1/density with
``rescale``), through ``torch.func.functional_call``: any cell works unchanged and the gradient of every
use reaches W.

Orientation: dim 0 of a weight is its output, dim 1 its input (``nn.Linear`` (out, in), ``nn.Conv2d``
(out, in, kh, kw)); N:M groups run along the input features at each (out, kh, kw), the layout sparse kernels
use. A cell whose 2-d weights are stored the other way round, as transformers' ``Conv1D`` (GPT-2) stores
(in, out), says so with a method ``mask_input_dims() -> {weight name: 0}`` (``input_dims``); its groups then run
along dim 0, still its input features, and its output units along dim 1 (a weight norm's rows, ``core.norms``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

MASK_MODES = ("none", "shared", "distinct", "disjoint")


def unstructured_mask(shape: torch.Size, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """A mask with exactly round(sparsity * numel) zeros at random places.

    Shapes: -> (*shape) float 0/1
    """
    n = int(torch.Size(shape).numel())
    zeros = round(sparsity * n)
    flat = torch.ones(n)
    flat[torch.randperm(n, generator=generator)[:zeros]] = 0.0
    return flat.view(shape)


def nm_mask(shape: torch.Size, n: int, m: int, generator: torch.Generator, input_dim: int = 1) -> torch.Tensor:
    """An N:M mask: in every group of m consecutive input channels (dim ``input_dim``) at each output and kernel
    position (out, kh, kw, ...), n are kept; a 2-d weight (out, in) groups along its input features, one stored
    (in, out) (``input_dim=0``, 2-d only) along its dim 0.

    Shapes: -> (*shape) float 0/1 (shape has >= 2 dims; shape[input_dim] a multiple of m)
    """
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
    if input_dim not in (0, 1) or (input_dim == 0 and len(shape) != 2):
        raise ValueError(f"N:M input_dim={input_dim} for a weight of shape {tuple(shape)}: choices are 1, or 0 for "
                         "a 2-d weight stored (in, out)")
    if len(shape) < 2 or shape[input_dim] % m != 0:
        raise ValueError(
            f"N:M with m={m} does not fit the tensor of shape {tuple(shape)}: its input channels (dim {input_dim}) "
            f"are not a multiple of {m}; choose an m that divides them or mask.kind='unstructured'")
    if input_dim == 0:  # (in, out): the mask of the (out, in) view, transposed back
        return nm_mask(torch.Size((shape[1], shape[0])), n, m, generator).t().contiguous()
    out, inputs, *kernel = shape
    positions = out * int(torch.Size(kernel).numel())
    keep = torch.rand(positions, inputs // m, m, generator=generator).argsort(dim=2)[..., :n]
    mask = torch.zeros(positions, inputs // m, m)
    mask.scatter_(2, keep, 1.0)
    # (out, *kernel, in) -> (out, in, *kernel)
    mask = mask.view(out, *kernel, inputs)
    return mask.permute(0, len(shape) - 1, *range(1, len(shape) - 1)).contiguous()


def disjoint_masks(shape: torch.Size, parts: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``parts`` masks that partition the tensor: every entry is kept by exactly one of them (as evenly as the
    size allows), at random places. Shapes: -> parts x (*shape) float 0/1"""
    n = int(torch.Size(shape).numel())
    if parts > n:
        raise ValueError(f"disjoint masks: {parts} layers cannot each own a part of a tensor of {n} entries")
    owner = torch.empty(n, dtype=torch.long)
    owner[torch.randperm(n, generator=generator)] = torch.arange(n) % parts
    return [(owner == i).float().view(shape) for i in range(parts)]


# The mask kinds, by the name a MaskSpec's ``kind`` takes: each draws one mask for a tensor of a shape whose input
# features lie along ``input_dim`` (which only a structured kind reads).
MASK_KINDS: dict[str, Any] = {
    "unstructured": lambda spec, shape, generator, input_dim: unstructured_mask(shape, spec.sparsity, generator),
    "nm": lambda spec, shape, generator, input_dim: nm_mask(shape, spec.n, spec.m, generator, input_dim),
}


@dataclass(frozen=True)
class MaskSpec:
    """Which masks a block draws.

    Attributes:
        mode: "none"; "shared" (one mask used at every layer); "distinct" (one mask per layer); "disjoint"
            (the layers' masks partition each weight: layer i owns 1/L of its entries, an untied model inside
            one tensor; kind unstructured, sparsity implied by the depth).
        kind: "unstructured" or "nm" (N:M along the input channels; see the module docstring).
        sparsity: fraction of zeros in [0, 1); for kind "nm" it is 1 - n/m and may be left at 0.
        n, m: the N:M pattern (n kept in every m), used by kind "nm".
        seed: seeds the masks; independent of the global RNG (runs set it from their seed unless pinned).
        min_dim: only weights with at least this many dims are masked (2: not biases or norms).
        rescale: multiply kept weights by 1/density (the mask's kept fraction), so that masking does not
            also shrink the cell's update against its input injection.
    """

    mode: str = "none"
    kind: str = "unstructured"
    sparsity: float = 0.0
    n: int = 2
    m: int = 4
    seed: int = 0
    min_dim: int = 2
    rescale: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ValueError(f"mask mode {self.mode!r} is not valid; choose one of {MASK_MODES}")
        if self.kind == "channel":
            raise ValueError("mask kind 'channel' was removed: a zeroed output channel was not removed (after a "
                             "norm and ReLU it was nonzero again) and the two convs' channel masks disagreed; "
                             f"choose one of {tuple(MASK_KINDS)}")
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask kind {self.kind!r} is not valid; choose one of {tuple(MASK_KINDS)}")
        if self.mode == "disjoint" and (self.kind != "unstructured" or self.sparsity != 0.0):
            raise ValueError(f"mask mode 'disjoint' partitions each weight between the layers (sparsity 1 - 1/depth): "
                             f"it needs kind 'unstructured' and sparsity 0, got kind={self.kind!r}, "
                             f"sparsity={self.sparsity}")
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
        return self.mode == "disjoint" or self.kind != "unstructured" or self.sparsity > 0.0  # other kinds: their own pattern

    @property
    def effective_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.kind == "nm" else self.sparsity

    def draw(self, shape: torch.Size, generator: torch.Generator, input_dim: int = 1) -> torch.Tensor:
        """One mask of this spec for a tensor of ``shape`` whose input features lie along ``input_dim`` (not for
        mode disjoint: ``disjoint_masks``)."""
        return MASK_KINDS[self.kind](self, shape, generator, input_dim)


def maskable_weights(cell: nn.Module, min_dim: int = 2) -> dict[str, torch.Tensor]:
    """The cell's weights: its parameters with at least ``min_dim`` dims, by the names functional_call takes, less
    those a cell names as no weight matrix with a method ``not_weights() -> [name]`` (GAT's attention vectors,
    (1, heads, C)). Masks and weight or spectral norms apply to these."""
    skip = set(cell.not_weights()) if hasattr(cell, "not_weights") else set()
    return {name: p for name, p in cell.named_parameters() if p.dim() >= min_dim and name not in skip}


def input_dims(cell: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, int]:
    """{name: the dim of its input features} for each of ``weights`` (a cell's ``maskable_weights``): 1, or 0 for a
    2-d weight the cell's ``mask_input_dims()`` says is stored (in, out); its output units lie along 1 - that dim.

    Raises:
        ValueError: ``mask_input_dims()`` names a weight not among ``weights``, or gives a dim other than 1 or 0
            (0 for a 2-d weight only).
    """
    declared = cell.mask_input_dims() if hasattr(cell, "mask_input_dims") else {}
    unknown = sorted(set(declared) - set(weights))
    if unknown:
        raise ValueError(f"mask_input_dims() of {type(cell).__name__} names {unknown}, which are not among its "
                         f"maskable weights {sorted(weights)}")
    bad = {name: d for name, d in declared.items() if d not in (0, 1) or (d == 0 and weights[name].dim() != 2)}
    if bad:
        raise ValueError(f"mask_input_dims() of {type(cell).__name__} gives {bad}: the input dim is 1, or 0 for a "
                         "2-d weight stored (in, out)")
    return {name: declared.get(name, 1) for name in weights}


class MaskSet(nn.Module):
    """The masks of one block: ``num_masks`` masks for each maskable weight of a cell, as buffers.

    ``shared`` draws one mask per weight (num_masks == 1); ``distinct`` draws one per layer.
    Buffers are named ``m{i}__{weight name with dots as underscores}``. A cell with a ``mask_input_dims()``
    method names the weights whose input features are not dim 1 (see the module docstring).
    """

    def __init__(self, cell: nn.Module, spec: MaskSpec, num_masks: int):
        super().__init__()
        self.spec = spec
        self.num_masks = 1 if spec.mode == "shared" else num_masks
        self.names: list[str] = []
        self.input_dims: dict[str, int] = {}
        if not spec.active:
            self.num_masks = 0
            return
        weights = maskable_weights(cell, spec.min_dim)
        if not weights:
            raise ValueError(f"masking was asked for but the cell has no weight with dim >= {spec.min_dim}")
        self.names = sorted(weights)
        self.input_dims = input_dims(cell, weights)
        generator = torch.Generator().manual_seed(spec.seed)
        if spec.mode == "disjoint":
            if num_masks < 2:
                raise ValueError(f"mask mode 'disjoint' needs depth >= 2 layers to share a weight, got {num_masks}")
            for name in self.names:
                w = weights[name]
                for i, part in enumerate(disjoint_masks(w.shape, num_masks, generator)):
                    self.register_buffer(self._key(i, name), part.to(w.dtype), persistent=True)
        else:
            for i in range(self.num_masks):
                for name in self.names:
                    w = weights[name]
                    mask = spec.draw(w.shape, generator, self.input_dims[name])
                    self.register_buffer(self._key(i, name), mask.to(w.dtype), persistent=True)
        self._refresh_scales()
        # masks restored from a checkpoint replace the drawn ones: their scales follow them
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._refresh_scales())

    def _refresh_scales(self) -> None:
        """1/density of each mask (rescale): kept weights carry the whole weight's scale."""
        self.scales = {(i, name): (self.mask(i, name).numel() / max(int(self.mask(i, name).count_nonzero()), 1)
                                   if self.spec.rescale else 1.0)
                       for i in range(self.num_masks) for name in self.names}

    @staticmethod
    def _key(i: int, name: str) -> str:
        return f"m{i}__{name.replace('.', '_')}"

    def mask(self, layer: int, name: str) -> torch.Tensor:
        """The mask layer ``layer`` applies to weight ``name`` (layers past num_masks wrap around)."""
        return getattr(self, self._key(layer % self.num_masks, name))

    def apply(self, weights: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
        """{name: W * M_layer (/ density with rescale)} for every masked weight name; ``weights`` maps names to
        the W to use."""
        i = layer % self.num_masks
        return {name: weights[name] * self.mask(i, name) * self.scales[(i, name)]
                if self.scales[(i, name)] != 1.0 else weights[name] * self.mask(i, name) for name in self.names}

    def used(self, layers: int | range | list[int], whole_rows: bool = False) -> int:
        """Entries of the masked weights that at least one of ``layers`` (a count: the first ones) keeps; with
        ``whole_rows``, every entry of an output row one of them keeps any of (a weight norm reads the whole row; a
        weight's rows lie along its output dim, 1 - its input dim)."""
        total = 0
        for name in self.names:
            union = torch.zeros_like(self.mask(0, name), dtype=torch.bool)
            for i in range(layers) if isinstance(layers, int) else layers:
                union |= self.mask(i, name) != 0
            if whole_rows:
                union = union.movedim(1 - self.input_dims[name], 0)
                rows = union.reshape(union.shape[0], -1)
                total += int(rows.any(dim=1).sum()) * rows.shape[1]
            else:
                total += int(union.sum())
        return total

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
