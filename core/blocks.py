"""Block: drives one cell as explicit (untied), weight-tied, masked weight-tied or DEQ.

A cell is any ``nn.Module`` with ``forward(z, x, **ctx) -> z_next``: ``z`` is the state, ``x`` the
injected input, ``ctx`` anything else the cell needs (an ``edge_index``, an attention mask). The
block never looks inside a cell except to find its weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .equilibrium import residual_metrics, spectral_norm_at
from .grads import GRAD_MODES, GradSpec
from .jacobian import jacobian_frobenius
from .masks import MaskSet, masked_call
from .norms import CellNorm
from .solvers import SolverSpec, get_solver
from .spec import BlockSpec
from .stats import BlockStats, SolverStats, residuals

CellFactory = Callable[[], nn.Module]


class Block(nn.Module):
    """One cell driven as ``spec.mode`` says; ``forward`` returns ``(z, BlockStats)``.

    Args:
        cell_factory: makes a freshly initialised cell; called once (tied, deq) or ``depth`` times
            (explicit).
        spec: a BlockSpec, or a mapping that BlockSpec.from_dict accepts.

    Shapes: x: (B, ...) injected input; z0: (B, ...) initial state (default zeros like x) -> z: like z0
    """

    def __init__(self, cell_factory: CellFactory, spec: BlockSpec | Mapping[str, Any]):
        super().__init__()
        self.spec = spec if isinstance(spec, BlockSpec) else BlockSpec.from_dict(spec)
        n_cells = self.spec.depth if self.spec.mode == "explicit" else 1
        self.cells = nn.ModuleList(cell_factory() for _ in range(n_cells))
        self.norms = nn.ModuleList(CellNorm(cell, self.spec.norm, self.spec.mask.min_dim) for cell in self.cells)
        self.masks = MaskSet(self.cells[0], self.spec.mask, num_masks=self.spec.depth)
        self.layers = self.spec.cycle  # a deq without distinct masks: 1 (a cycle f o ... o f has the fixed point of f)
        self._resolve()
        self._sparsity = self.masks.zero_fraction()
        # DEQ warm-up (set by the trainer): > 0 unrolls the DEQ's map this many times with plain backprop, as a
        # weight-tied model, instead of solving for its fixed point (MDEQ's pretraining)
        self.warmup_depth = 0

    def _resolve(self) -> None:
        """Registries looked up once per spec: the backward mode and the adjoint solver. Without a solver of its
        own the adjoint is the forward solver as configured: its options (a fixed-point iteration's damping,
        Anderson's memory and mixing, ``sample_dims``), with ``grad.options`` over them."""
        grad = self.spec.grad
        self._backward = GRAD_MODES[grad.mode]
        if grad.solver:
            self._adjoint, self._grad = get_solver(grad.solver), grad
        else:
            self._adjoint = self.spec.solver.function
            self._grad = dataclasses.replace(grad, options={**self.spec.solver.options, **grad.options})

    @contextlib.contextmanager
    def solved_with(self, solver: SolverSpec, grad: GradSpec) -> Iterator["Block"]:
        """Temporarily solve and differentiate with other budgets (e.g. a tight-tolerance reference gradient).

        Raises:
            ValueError: the block is not a DEQ.
        """
        if self.spec.mode != "deq":
            raise ValueError(f"solved_with needs a deq block, not mode {self.spec.mode!r}")
        saved = self.spec
        self.spec = dataclasses.replace(saved, solver=solver, grad=grad)
        self._resolve()
        try:
            yield self
        finally:
            self.spec = saved
            self._resolve()

    # ----------------------------------------------------------------- weights of each layer
    def _layer_weights(self, n_layers: int) -> list[dict[str, torch.Tensor]]:
        """For each layer, the tensors that stand in for its cell's own weights (empty: call as is).

        Normalised weights are computed once per forward (so every layer and solver step sees the
        same normalised W), then multiplied by the layer's mask.
        """
        cache: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        normed: dict[int, dict[str, torch.Tensor]] = {}  # once per cell: a spectral norm steps its vectors per call
        out = []
        for i in range(n_layers):
            cell_idx = i if self.spec.mode == "explicit" else 0
            mask_idx = i % self.masks.num_masks if self.masks.num_masks else -1
            key = (cell_idx, mask_idx)
            if key not in cache:
                cell = self.cells[cell_idx]
                if cell_idx not in normed:
                    normed[cell_idx] = self.norms[cell_idx](cell)
                weights = dict(normed[cell_idx])
                if mask_idx >= 0:
                    weights.update(self.masks.apply({**dict(cell.named_parameters()), **weights}, mask_idx))
                cache[key] = weights
            out.append(cache[key])
        return out

    def _run_layer(self, i: int, weights: dict[str, torch.Tensor], z: torch.Tensor, x: torch.Tensor,
               ctx: dict[str, Any]) -> torch.Tensor:
        cell = self.cells[i if self.spec.mode == "explicit" else 0]
        return masked_call(cell, weights, z, x, **ctx)

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, z0: torch.Tensor | None = None, **ctx: Any) -> tuple[torch.Tensor, BlockStats]:
        z = torch.zeros_like(x) if z0 is None else z0
        if self.spec.mode == "deq" and not self.warmup_depth:
            with self._full_precision(x) as cast:
                return self._forward_deq(cast(z), cast(x), {k: cast(v) for k, v in ctx.items()})
        return self._forward_unrolled(z, x, ctx)

    @contextlib.contextmanager
    def _full_precision(self, x: torch.Tensor) -> Iterator[Callable[[Any], Any]]:
        """A DEQ solves in its weights' precision under autocast too: in bf16 (8 bits of mantissa) neither the
        forward iterates nor the adjoint's vector-Jacobian products get below a relative residual of about 1e-3,
        so every solve would run to its budget unconverged. Yields the cast of the block's floating-point inputs
        (the stem's bf16 output) to that precision (its first parameter's dtype); without autocast, nothing
        changes."""
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            yield lambda v: v
            return
        first = next(self.parameters(), None)  # the cell's weights' precision (float32 as a rule)
        dtype = first.dtype if first is not None else torch.get_default_dtype()
        with torch.autocast(device, enabled=False):
            yield lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    @property
    def active_depth(self) -> int:
        """Layers unrolled now: ``eval_depth`` in eval mode when set, else ``depth`` (a DEQ in warm-up:
        ``warmup_depth``)."""
        if self.spec.mode == "deq":
            return self.warmup_depth
        if not self.training and self.spec.eval_depth is not None:
            return self.spec.eval_depth
        return self.spec.depth

    def _forward_unrolled(self, z: torch.Tensor, x: torch.Tensor, ctx: dict[str, Any]) -> tuple[torch.Tensor, BlockStats]:
        depth = self.active_depth
        weights = self._layer_weights(depth)
        abs_r, rel_r = [], []
        for i in range(depth):
            prev = z
            z = self._run_layer(i, weights[i], z, x, ctx)
            with torch.no_grad():
                a, r = residuals(z.detach(), prev.detach())
                abs_r.append(a.mean())
                rel_r.append(r.mean())
        abs_trace, rel_trace = torch.stack(abs_r), torch.stack(rel_r)  # kept on the device: BlockStats.resolve
        stats = BlockStats(
            mode=self.spec.mode, depth=depth, nfe_forward=depth,
            nfe_backward=depth if z.requires_grad else 0,
            abs_trace=abs_trace, rel_trace=rel_trace,
            abs_residual=abs_trace[-1], rel_residual=rel_trace[-1], sparsity=self._sparsity,
        )
        return z, stats

    def _deq_map(self, x: torch.Tensor, ctx: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The DEQ's map z -> f_K(... f_1(z, x) ...) for this input (K = 1 without distinct masks)."""
        k = self.layers
        weights = self._layer_weights(k)

        def f(state: torch.Tensor) -> torch.Tensor:
            for i in range(k):
                state = self._run_layer(i, weights[i], state, x, ctx)
            return state

        return f

    def equilibrium(self, x: torch.Tensor, z0: torch.Tensor | None = None, *, power_iters: int = 20,
                    rel_residual: float = 1e-2, **ctx: Any) -> dict[str, float]:
        """How well a DEQ's solve reaches its fixed point at input ``x``, with the budget of the current mode:
        ``rel_residual`` (mean relative residual at z*), ``converged_fraction`` (systems within ``rel_residual``:
        samples, or positions and nodes under the solver's ``sample_dims=2``), ``systems`` (how many, to pool
        several inputs' measures) and ``spectral_norm`` (the largest per-sample estimate of ||df/dz|| at z*,
        ``power_iters`` steps of power iteration, nan for 0; > 1: the map does not contract there). Parameters'
        gradients are not touched.

        Shapes: x: (B, ...) -> {name: float}
        """
        if self.spec.mode != "deq":
            raise ValueError(f"equilibrium needs a deq block, not mode {self.spec.mode!r}")
        f = self._deq_map(x, ctx)
        z = torch.zeros_like(x) if z0 is None else z0
        with torch.no_grad():
            z_star, _ = self.spec.solver.solve(f, z.detach(), training=self.training)
            sample_dims = int(self.spec.solver.options.get("sample_dims", 1))
            out = residual_metrics(f(z_star), z_star, rel_residual, sample_dims=sample_dims)
        out["systems"] = float(math.prod(z_star.shape[:sample_dims]))
        out["spectral_norm"] = (spectral_norm_at(lambda v: f(v), z_star, iters=power_iters).max().item()
                                if power_iters > 0 else math.nan)
        return out

    def _forward_deq(self, z: torch.Tensor, x: torch.Tensor, ctx: dict[str, Any]) -> tuple[torch.Tensor, BlockStats]:
        spec = self.spec
        k = self.layers
        f = self._deq_map(x, ctx)

        with torch.no_grad():
            z_star, sstats = spec.solver.solve(f, z.detach(), training=self.training)
        stats = BlockStats(
            mode="deq", depth=k, nfe_forward=sstats.nfe * k, abs_trace=sstats.abs_trace,
            rel_trace=sstats.rel_trace, abs_residual=sstats.abs_residual, rel_residual=sstats.rel_residual,
            converged=sstats.converged, sparsity=self._sparsity,
        )
        if not torch.is_grad_enabled():
            return z_star, stats

        f0 = z0 = None
        if spec.grad.mode == "ift" or (self.training and spec.jacobian_samples > 0):
            z0 = z_star.detach().requires_grad_()
            f0 = f(z0)
            stats.nfe_forward += k
            if self.training and spec.jacobian_samples > 0:
                stats.jacobian_loss = jacobian_frobenius(f0, z0, spec.jacobian_samples)

        def on_backward(adjoint: SolverStats) -> None:  # the adjoint's VJPs, plus the one through f0
            stats.nfe_backward = (adjoint.nfe + 1) * k
            stats.adjoint_rel_residual = adjoint.rel_residual

        out, extra_forward, backward = self._backward(f, z_star, self._grad, self._adjoint, on_backward, f0=f0, z0=z0)
        stats.nfe_forward += extra_forward * k
        if backward is not None:
            stats.nfe_backward = backward * k
        return out, stats

    # ----------------------------------------------------------------- parameter counts
    def param_counts(self) -> dict[str, int]:
        """Parameters four ways: unique (stored), dense (as if every layer had its own cell), nonzero
        (entries not masked out, summed over layers) and used (stored entries that at least one layer keeps:
        a shared 0.5 mask leaves half of W unused, distinct masks at depth 4 about 6%; W is normed before it is
        masked, so under a spectral norm every stored entry is used, and under a weight norm every entry of an
        output unit's row a mask keeps any of: dim 0, or dim 1 of a weight the cell stores (in, out))."""
        per_cell = sum(p.numel() for p in self.cells[0].parameters()) + sum(p.numel() for p in self.norms[0].parameters())
        unique = sum(p.numel() for p in self.parameters())
        dense = per_cell * self.layers
        if not self.masks.num_masks:
            return {"unique": unique, "dense": dense, "nonzero": dense, "used": unique}
        masked_total = sum(self.masks.mask(0, n).numel() for n in self.masks.names)
        nonzero = 0
        for i in range(self.layers):
            kept = sum(int(self.masks.mask(i, n).count_nonzero()) for n in self.masks.names)
            nonzero += per_cell - masked_total + kept
        if self.spec.norm == "spectral":  # normed before masking (``CellNorm``): sigma of all of W scales the output
            used = unique
        elif self.spec.mode == "explicit" and self.spec.norm == "none":  # its own weights: what it keeps it uses
            used = nonzero
        elif self.spec.mode == "explicit":  # a weight norm: every entry of a row its layer's mask keeps any of
            used = unique - masked_total * self.layers + sum(self.masks.used([i], whole_rows=True)
                                                             for i in range(self.layers))
        else:  # under a weight norm, the whole of each row a layer keeps any of (the row's norm reads it)
            used = unique - masked_total + self.masks.used(min(self.layers, self.masks.num_masks),
                                                           whole_rows=self.spec.norm == "weight")
        return {"unique": unique, "dense": dense, "nonzero": nonzero, "used": used}

    def extra_repr(self) -> str:
        s = self.spec
        out = f"mode={s.mode}, depth={s.depth}"
        if s.mask.active:
            out += f", mask={s.mask.mode}/{s.mask.kind}@{s.mask.effective_sparsity:g}"
        if s.mode == "deq":
            out += f", solver={s.solver.name}, grad={s.grad.mode}"
        return out


def build_block(cell_factory: CellFactory, spec: BlockSpec | Mapping[str, Any] | None = None, **overrides: Any) -> Block:
    """A Block from a cell factory and a spec (a BlockSpec, a mapping, or keyword overrides)."""
    if isinstance(spec, BlockSpec):
        if overrides:
            spec = BlockSpec.from_dict(spec.as_dict(), **overrides)
        return Block(cell_factory, spec)
    return Block(cell_factory, BlockSpec.from_dict(spec, **overrides))


def model_param_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts of a whole model (stem, blocks, head): unique, dense, nonzero and used, where the
    blocks contribute their own counts and every other parameter counts once."""
    unique = sum(p.numel() for p in model.parameters())
    dense = nonzero = used = unique
    for mod in model.modules():
        if isinstance(mod, Block):
            c = mod.param_counts()
            dense += c["dense"] - c["unique"]
            nonzero += c["nonzero"] - c["unique"]
            used += c["used"] - c["unique"]
    return {"params/unique": unique, "params/dense": dense, "params/nonzero": nonzero, "params/used": used}
