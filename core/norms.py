"""Weight or spectral normalisation of a cell's weights, applied functionally (helps a DEQ contract).

The cell itself stays a plain module: a ``CellNorm`` holds the extra state (weight-norm gains,
spectral-norm power-iteration vectors) and maps the cell's raw weights to normalised ones once per
block forward. The block passes them to the cell with ``functional_call``, as it does for masks,
so masks multiply the normalised weights and any cell works unchanged. A spectral norm therefore bounds the
unmasked weight: a masked weight's spectral norm can be a little larger (a 0/1 mask is not a contraction in
operator norm) and, with ``mask.rescale``, up to 1/density larger (``BlockSpec`` refuses that for a DEQ).

Orientation: a weight's output units lie along dim 0, or along dim 1 for a 2-d weight its cell stores (in, out)
(``mask_input_dims()``, as the masks read it: ``masks.input_dims``), such as GPT-2's ``Conv1D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn



class WeightNorm(nn.Module):
    """W -> g * W / ||W|| per output unit (dim ``out_dim``: 0, or 1 for a 2-d weight stored (in, out)); g starts at
    ||W|| so the initial weight is unchanged.

    Shapes: weight: (out, ...) -> (out, ...), gain (out, 1, ...); out_dim=1: (in, out) -> (in, out), gain (1, out)
    """

    def __init__(self, weight: torch.Tensor, out_dim: int = 0):
        super().__init__()
        self.out_dim = _check_out_dim(weight, out_dim)
        self.gain = nn.Parameter(_row_norm(weight.detach(), out_dim).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (self.gain / _row_norm(weight, self.out_dim).clamp_min(1e-12))

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}"


class SpectralNorm(nn.Module):
    """W -> W / sigma_max(W viewed as (out, rest)), sigma by one power-iteration step per training forward.

    The singular vectors are converged on the initial weight at construction (``init_iters`` steps, as
    torch's ``spectral_norm`` does), so the normalised weight has spectral norm ~1 from the first
    forward, in eval mode too (random vectors would under-estimate sigma and leave a DEQ map expansive).
    ``out_dim`` 1 (a 2-d weight stored (in, out)) is checked, and changes nothing: sigma(W) = sigma(W^T).

    Shapes: weight: (dim 0, ...) -> (dim 0, ...); u: (dim 0,), v: (rest,)
    """

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12, init_iters: int = 15, *, out_dim: int = 0):
        super().__init__()
        _check_out_dim(weight, out_dim)
        out = weight.shape[0]
        rest = weight[0].numel()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("u", F.normalize(torch.randn(out, generator=g), dim=0, eps=eps).to(weight.dtype))
        self.register_buffer("v", F.normalize(torch.randn(rest, generator=g), dim=0, eps=eps).to(weight.dtype))
        self.eps = eps
        mat = weight.detach().reshape(out, -1).to(self.u.device)
        for _ in range(init_iters):
            self._power_step(mat)

    @torch.no_grad()
    def _power_step(self, mat: torch.Tensor) -> None:
        self.v.copy_(F.normalize(mat.t() @ self.u, dim=0, eps=self.eps))
        self.u.copy_(F.normalize(mat @ self.v, dim=0, eps=self.eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # in the weight's own precision, autocast or not: sigma from bf16 products would be off by ~1e-2 and its
        # dot with the float32 vectors fails (the cell's products under autocast are unaffected)
        with torch.autocast(weight.device.type, enabled=False):
            mat = weight.reshape(weight.shape[0], -1)
            if self.training:
                self._power_step(mat.detach())
            # the buffers are stepped in place by the next training forward: autograd keeps copies, as torch's
            # spectral_norm does (else two forwards before one backward fail on the first's saved vectors)
            u, v = self.u.clone(), self.v.clone()
            sigma = torch.dot(u, mat @ v)
            return weight / sigma


# The normalisations, by the name a BlockSpec's ``norm`` takes ("none": the weights as they are).
NORMS: dict[str, type[nn.Module]] = {"weight": WeightNorm, "spectral": SpectralNorm}
NORM_KINDS = ("none", *NORMS)


class CellNorm(nn.Module):
    """The normalisation of every weight of one cell (``masks.maskable_weights``: at least ``min_dim`` dims, less
    what the cell names in ``not_weights()``).

    ``forward(cell)`` returns {name: normalised weight} for ``functional_call``.
    """

    def __init__(self, cell: nn.Module, kind: str, min_dim: int = 2):
        super().__init__()
        if kind not in NORM_KINDS:
            raise ValueError(f"norm {kind!r} is not valid; choose one of {NORM_KINDS}")
        self.kind = kind
        from .masks import input_dims, maskable_weights  # the weights a mask would cover: the same ones are normed

        weights = maskable_weights(cell, min_dim) if kind != "none" else {}
        self.names = list(weights)
        out_dims = {n: 1 - d for n, d in input_dims(cell, weights).items()} if weights else {}
        self.norms = nn.ModuleDict({n.replace(".", "__"): NORMS[kind](weights[n], out_dim=out_dims[n])
                                    for n in self.names})

    def forward(self, cell: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(cell.named_parameters())
        return {n: self.norms[n.replace(".", "__")](params[n]) for n in self.names}


def _check_out_dim(weight: torch.Tensor, out_dim: int) -> int:
    if out_dim not in (0, 1) or (out_dim == 1 and weight.dim() != 2):
        raise ValueError(f"out_dim={out_dim} for a weight of shape {tuple(weight.shape)}: choices are 0, or 1 for a "
                         "2-d weight stored (in, out)")
    return out_dim


def _row_norm(weight: torch.Tensor, out_dim: int = 0) -> torch.Tensor:
    """The norm of each output unit's weights, shaped to broadcast against the weight.

    Shapes: weight: (..., out at out_dim, ...) -> 1 everywhere but out at out_dim
    """
    rows = weight.movedim(out_dim, 0)
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    return rows.reshape(rows.shape[0], -1).norm(dim=1).view(shape)
