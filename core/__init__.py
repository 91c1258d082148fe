"""tiedlab.core: drive any cell as explicit, weight-tied, masked weight-tied or DEQ. Imports only torch."""

from .blocks import Block, CellFactory, build_block, model_param_counts
from .grads import GRAD_MODES, GradSpec
from .jacobian import jacobian_frobenius
from .masks import MASK_KINDS, MASK_MODES, MaskSet, MaskSpec, maskable_weights, masked_call
from .norms import NORM_KINDS, NORMS, CellNorm, SpectralNorm, WeightNorm
from .solvers import SOLVERS, SolverSpec, get_solver, solver_options
from .spec import BLOCK_MODES, BlockSpec
from .stats import BlockStats, SolverStats
from .equilibrium import (EquilibriumThresholds, equilibrium_flags, gradient_cosine, residual_metrics,
                          spectral_norm_at)

__all__ = [
    "BLOCK_MODES", "GRAD_MODES", "MASK_KINDS", "MASK_MODES", "NORM_KINDS", "NORMS", "SOLVERS", "SolverSpec",
    "Block", "BlockSpec", "BlockStats", "CellFactory", "GradSpec", "MaskSet", "MaskSpec", "SolverStats",
    "build_block", "get_solver", "jacobian_frobenius", "maskable_weights", "masked_call",
    "model_param_counts", "solver_options", "CellNorm", "SpectralNorm", "WeightNorm",
    "EquilibriumThresholds", "equilibrium_flags", "gradient_cosine", "residual_metrics", "spectral_norm_at",
]
