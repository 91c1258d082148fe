"""Small cells for the core tests."""

import torch
from torch import nn


class TanhCell(nn.Module):
    """z' = tanh(W z + U x + b), contractive when ||W||_2 * 1 < 1 (scale sets ||W||_2)."""

    def __init__(self, dim: int = 6, scale: float = 0.5, dtype=torch.float64):
        super().__init__()
        w = torch.randn(dim, dim, dtype=dtype)
        self.W = nn.Parameter(scale * w / torch.linalg.matrix_norm(w, 2))
        self.U = nn.Parameter(torch.randn(dim, dim, dtype=dtype) / dim**0.5)
        self.b = nn.Parameter(torch.zeros(dim, dtype=dtype))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


class InOutCell(TanhCell):
    """z' = tanh(z W + x U^T + b): W is stored (in, out), as GPT-2's ``Conv1D`` stores it, and ``mask_input_dims``
    says so; U is stored (out, in) as usual."""

    def forward(self, z, x):
        return torch.tanh(z @ self.W + x @ self.U.T + self.b)

    def mask_input_dims(self):
        return {"W": 0}


class LinearCell(nn.Module):
    """z' = A z + B x: its fixed point z* = (I - A)^-1 B x is known in closed form."""

    def __init__(self, dim: int = 5, scale: float = 0.6, dtype=torch.float64):
        super().__init__()
        a = torch.randn(dim, dim, dtype=dtype)
        self.A = nn.Parameter(scale * a / torch.linalg.matrix_norm(a, 2))
        self.B = nn.Parameter(torch.randn(dim, dim, dtype=dtype))

    def forward(self, z, x):
        return z @ self.A.T + x @ self.B.T


class CtxWeightCell(nn.Module):
    """z' = tanh(z W^T + x): W comes in through ctx so gradcheck can differentiate it."""

    def forward(self, z, x, W):
        return torch.tanh(z @ W.T + x)
