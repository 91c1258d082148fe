"""BlockSpec: the one config object that says how a block drives its cell, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .grads import GradSpec
from .masks import MaskSpec
from .norms import NORM_KINDS
from .solvers import STOP_MODES, check_solver_options, get_solver

BLOCK_MODES = ("explicit", "tied", "deq")


@dataclass(frozen=True)
class BlockSpec:
    """How a block drives its cell.

    Attributes:
        mode: "explicit" (depth independent copies), "tied" (one cell unrolled depth times) or "deq".
        depth: layers for explicit and tied. For deq with distinct masks, the cycle length K: the map is
            f_K o ... o f_1 with one mask per position; any other deq uses one map f (K = 1).
        eval_depth: tied only: unroll this many layers in eval mode (test-time depth); None = depth.
            With distinct masks, layers past ``depth`` reuse the masks cyclically.
        mask: which masks the layers use (see MaskSpec).
        norm: "none", "weight" or "spectral" normalisation of the cell's weights.
        solver, max_iter, tol, stop_mode, solver_options: the DEQ forward solve in training.
        eval_max_iter, eval_tol: the DEQ solve in eval mode (test-time compute); None = as in training.
        grad: how the DEQ is differentiated (see GradSpec).
        jacobian_samples: > 0 makes a training-mode DEQ forward return the Hutchinson Jacobian penalty.
    """

    mode: str = "tied"
    depth: int = 4
    eval_depth: int | None = None
    mask: MaskSpec = field(default_factory=MaskSpec)
    norm: str = "none"
    solver: str = "anderson"
    max_iter: int = 30
    tol: float = 1e-3
    stop_mode: str = "rel"
    solver_options: dict = field(default_factory=dict)
    eval_max_iter: int | None = None
    eval_tol: float | None = None
    grad: GradSpec = field(default_factory=GradSpec)
    jacobian_samples: int = 0

    def __post_init__(self) -> None:
        if self.mode not in BLOCK_MODES:
            raise ValueError(f"block mode {self.mode!r} is not valid; choose one of {BLOCK_MODES}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"block depth={self.depth!r} must be an integer >= 1")
        if self.eval_depth is not None:
            if self.mode != "tied":
                raise ValueError(f"eval_depth={self.eval_depth} is only meaningful for mode 'tied', not {self.mode!r}")
            if self.eval_depth < 1:
                raise ValueError(f"block eval_depth={self.eval_depth} must be >= 1")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"norm {self.norm!r} is not valid; choose one of {NORM_KINDS}")
        get_solver(self.solver)
        check_solver_options(self.solver, self.solver_options)
        check_solver_options(self.grad.solver or self.solver, self.grad.solver_options)
        if self.stop_mode not in STOP_MODES:
            raise ValueError(f"stop_mode={self.stop_mode!r} is not valid; choose one of {STOP_MODES}")
        for name in ("max_iter", "eval_max_iter"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        for name in ("tol", "eval_tol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name}={value} must be >= 0")
        if self.jacobian_samples < 0:
            raise ValueError(f"jacobian_samples={self.jacobian_samples} must be >= 0")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None = None, **overrides: Any) -> "BlockSpec":
        """Build from a (possibly nested) mapping such as a Hydra/OmegaConf node; keyword overrides win.

        Unknown keys at any level raise a ValueError that lists the valid keys.
        """
        merged = {**_plain(config or {}), **overrides}
        _check_keys("block", merged, cls)
        if isinstance(merged.get("mask"), Mapping):
            _check_keys("block.mask", merged["mask"], MaskSpec)
            merged["mask"] = MaskSpec(**merged["mask"])
        if isinstance(merged.get("grad"), Mapping):
            _check_keys("block.grad", merged["grad"], GradSpec)
            merged["grad"] = GradSpec(**merged["grad"])
        return cls(**merged)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _plain(config: Any) -> Any:
    """A nested plain-dict copy of a mapping (works for OmegaConf nodes without importing omegaconf)."""
    if isinstance(config, Mapping) or hasattr(config, "items"):
        return {str(k): _plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [_plain(v) for v in config]
    return config


def _check_keys(where: str, config: Mapping[str, Any], cls: type) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(valid)}")
