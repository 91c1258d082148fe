"""BlockSpec: the one config object that says how a block drives its cell, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .grads import GradSpec
from .masks import MaskSpec
from .norms import NORM_KINDS
from .solvers import SolverSpec, check_solver_options

BLOCK_MODES = ("explicit", "tied", "deq")
# The nested specs of a BlockSpec: one per config node of the same name (block.mask is the config's ``mask``).
NESTED: dict[str, type] = {"mask": MaskSpec, "solver": SolverSpec, "grad": GradSpec}


@dataclass(frozen=True)
class BlockSpec:
    """How a block drives its cell. A run config's ``block``, ``mask``, ``solver`` and ``grad`` nodes have
    exactly these fields and the nested specs' fields; ``from_dict`` is the one way from a config to a spec.

    Attributes:
        mode: "explicit" (depth independent copies), "tied" (one cell unrolled depth times) or "deq".
        depth: layers for explicit and tied. For deq with distinct masks, the cycle length K: the map is
            f_K o ... o f_1 with one mask per position; any other deq uses one map f (K = 1).
        eval_depth: tied only: unroll this many layers in eval mode (test-time depth); None = depth.
            With distinct masks, layers past ``depth`` reuse the masks cyclically.
        norm: "none", "weight" or "spectral" normalisation of the cell's weights (``norms.NORMS``), applied
            before the masks: a masked weight's spectral norm is not bounded by the unmasked one's (a 0/1 mask
            can raise it a little; ``mask.rescale`` multiplies it by up to 1/density), so a DEQ's recorded
            equilibrium health, not the norm, says whether its map contracts. A DEQ with a spectral norm and a
            rescaled mask is refused: its map is expanded by design.
        jacobian_samples: > 0 makes a training-mode DEQ forward return the Hutchinson Jacobian penalty.
        mask: which masks the layers use (see MaskSpec).
        solver: the DEQ forward solve (see SolverSpec).
        grad: how the DEQ is differentiated (see GradSpec).
    """

    mode: str = "tied"
    depth: int = 4
    eval_depth: int | None = None
    norm: str = "none"
    jacobian_samples: int = 0
    mask: MaskSpec = field(default_factory=MaskSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    grad: GradSpec = field(default_factory=GradSpec)

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
        if self.mode == "deq" and self.norm == "spectral" and self.mask.active and self.mask.rescale:
            raise ValueError(f"a deq block with norm 'spectral' and a rescaled mask (mask mode {self.mask.mode!r}, "
                             "rescale=True): the norm bounds W before masking and rescale multiplies the kept "
                             "weights by 1/density, so the map it should make contract is expanded; use "
                             "mask.rescale=false, or norm 'weight' or 'none'")
        for name, cls in NESTED.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"block {name}={getattr(self, name)!r} must be a {cls.__name__} "
                                 "(BlockSpec.from_dict builds one from a mapping)")
        if self.grad.solver is None:
            check_solver_options(self.solver.name, self.grad.options)
        if self.jacobian_samples < 0:
            raise ValueError(f"jacobian_samples={self.jacobian_samples} must be >= 0")

    @property
    def cycle(self) -> int:
        """K, the layers of a deq's map f_K o ... o f_1: ``depth`` with one mask per layer (mask mode distinct or
        disjoint, active), else 1 (one map f: a cycle of it has the fixed point of f). Other modes: ``depth``."""
        if self.mode != "deq":
            return self.depth
        return self.depth if self.mask.active and self.mask.mode in ("distinct", "disjoint") else 1

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None = None, **overrides: Any) -> "BlockSpec":
        """Build from a (possibly nested) mapping such as a Hydra/OmegaConf node; keyword overrides win.
        ``mask``, ``solver`` and ``grad`` are mappings of their specs' fields (or the specs themselves).

        Unknown keys at any level raise a ValueError that lists the valid keys.
        """
        merged = {**_plain(config or {}), **overrides}
        _check_keys("block", merged, cls)
        for name, nested in NESTED.items():
            if isinstance(merged.get(name), Mapping):
                _check_keys(f"block.{name}", merged[name], nested)
                merged[name] = nested(**merged[name])
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
