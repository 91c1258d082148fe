"""The shared contract test every paradigm adapter's test module runs.

``check_paradigm(cls, data, model)`` builds the adapter on its real data (shrunk by the options the
caller passes) and checks, for every block mode: the loss is finite, one fixed batch is overfit in a
few optimiser steps, evaluation returns well-formed keys, and the model's block reports its stats.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from tiedlab.core import BlockSpec, model_param_counts

from .base import DataBundle, Paradigm

CONTRACT_BLOCKS: dict[str, dict[str, Any]] = {
    "explicit": dict(mode="explicit", depth=2),
    "tied": dict(mode="tied", depth=2),
    "tied_distinct_mask": dict(mode="tied", depth=2, mask=dict(mode="distinct", sparsity=0.5)),
    "deq_anderson_ift": dict(mode="deq", solver=dict(name="anderson", max_iter=8, tol=1e-3),
                             grad=dict(mode="ift", max_iter=8)),
    "deq_broyden_phantom": dict(mode="deq", solver=dict(name="broyden", max_iter=8, tol=1e-3),
                                grad=dict(mode="phantom", steps=2)),
    "deq_fixed_point_onestep": dict(mode="deq", solver=dict(name="fixed_point", max_iter=8, tol=1e-3,
                                                            options=dict(damping=0.8)), grad=dict(mode="onestep")),
}


def check_paradigm(
    cls: type[Paradigm], data: Mapping[str, Any], model: Mapping[str, Any], *,
    blocks: Sequence[str] = tuple(CONTRACT_BLOCKS), overfit_steps: int = 30, lr: float = 3e-3,
    overfit_ratio: float = 0.7, batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """Run the contract for every block in ``blocks``; returns per block the first and last overfit loss.

    Raises AssertionError with the block name on the first violation.
    """
    device = torch.device("cpu")
    results = {}
    for key in blocks:
        torch.manual_seed(0)
        paradigm = cls(data, model, device, seed=0, batch_size=batch_size)
        bundle: DataBundle = paradigm.build_data()
        assert bundle.steps_per_epoch >= 1 and bundle.samples_per_step >= 1, key
        assert "dataset" in bundle.meta, f"{cls.name}: DataBundle.meta must name the dataset"
        if not results:  # one epoch's batches, once: the engine sizes train.epochs runs by steps_per_epoch
            yielded = sum(1 for _ in bundle.train_batches(torch.Generator().manual_seed(0)))
            assert yielded == bundle.steps_per_epoch, (
                f"{cls.name}: DataBundle.steps_per_epoch is {bundle.steps_per_epoch} but train_batches yields "
                f"{yielded} batches an epoch (a run of train.epochs=E would train E x {bundle.steps_per_epoch} steps)")
        spec = BlockSpec.from_dict(CONTRACT_BLOCKS[key])
        net = paradigm.build_model(bundle, spec).to(device)
        counts = model_param_counts(net)
        assert counts["params/unique"] > 0, key
        if spec.mode == "tied":
            assert counts["params/dense"] > counts["params/unique"], f"{key}: tied model shares no block weights"

        batch = next(iter(bundle.train_batches(torch.Generator().manual_seed(0))))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        losses = []
        for _ in range(overfit_steps):
            net.train()
            out = paradigm.training_step(net, batch)
            assert out.loss.dim() == 0 and math.isfinite(out.loss.item()), f"{key}: loss {out.loss}"
            assert out.stats is not None, f"{key}: training_step must return the block's stats"
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(out.loss.item())
        if not losses[-1] < overfit_ratio * losses[0]:
            solve = ""
            if spec.mode == "deq":  # a map that does not contract trains badly: say so, not only the losses
                last = out.stats.resolve() if hasattr(out.stats, "resolve") else out.stats
                solve = (f"; the last solve's relative residual {float(last.rel_residual):.3g}, converged fraction "
                         f"{float(last.converged):.3g} (a map that does not contract: see configs/recipe/README.md)")
            raise AssertionError(f"{key}: one batch did not overfit in {overfit_steps} Adam steps at lr {lr:g}: "
                                 f"{losses[0]:.4f} -> {losses[-1]:.4f}, not below {overfit_ratio:g}x{solve} "
                                 "(check_paradigm's lr, overfit_steps and overfit_ratio set the test)")

        for split in ("val", "test"):
            metrics = paradigm.evaluate(net, bundle, split)
            primary = f"{split}/{cls.primary_metric}"
            assert primary in metrics, f"{key}: evaluate({split!r}) lacks {primary!r}: {sorted(metrics)}"
            for name, value in metrics.items():
                assert name.startswith(f"{split}/"), f"{key}: metric {name!r} is not under {split}/"
                assert isinstance(value, float) and math.isfinite(value), f"{key}: {name}={value!r}"
        if cls.scores_train is True and not results:  # train.score_train's fit/loss: the report's capacity measure
            fit = paradigm.evaluate(net, bundle, "train")
            assert "train/loss" in fit, (f"{key}: scores_train is True but evaluate('train') lacks 'train/loss' (the "
                                         "training objective, which the report's capacity comparisons read as "
                                         f"fit/loss): {sorted(fit)}")
        results[key] = {"first": losses[0], "last": losses[-1]}
    return results
