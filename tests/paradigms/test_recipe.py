"""The CONTRIBUTING recipe works: the test-only paradigm passes the shared contract and both ways of
registering it (a registry line, an import path) resolve."""

import pytest

from support.toy import ToyParadigm
from tiedlab.paradigms import base
from tiedlab.paradigms.contract import CONTRACT_BLOCKS, check_paradigm


def test_toy_paradigm_passes_the_shared_contract_in_every_block_mode():
    results = check_paradigm(ToyParadigm, data={}, model={"width": 16}, batch_size=32)
    assert set(results) == set(CONTRACT_BLOCKS)


def test_registry_line_and_import_path_both_resolve(monkeypatch):
    monkeypatch.setitem(base.PARADIGMS, "toy", "support.toy:ToyParadigm")
    assert base.get_paradigm("toy") is ToyParadigm
    assert base.get_paradigm("support.toy:ToyParadigm") is ToyParadigm
    with pytest.raises(ValueError, match="cannot be imported"):
        base.get_paradigm("support.toy:Missing")
    with pytest.raises(ValueError, match="not a Paradigm subclass"):
        base.get_paradigm("support.toy:ToyData")


def test_contract_catches_an_adapter_that_does_not_learn():
    class Frozen(ToyParadigm):
        def training_step(self, model, batch):
            out = super().training_step(model, batch)
            out.loss = out.loss.detach().requires_grad_() * 1.0  # gradient never reaches the model
            return out

    with pytest.raises(AssertionError, match="did not overfit"):
        check_paradigm(Frozen, data={}, model={"width": 16}, blocks=["tied"], batch_size=32)


def test_a_new_paradigms_runs_describe_themselves_to_the_report(tmp_path):
    """The toy paradigm, registered by import path only, trains through the engine; its metrics.json names its
    primary metric and width, and the report reads them with no table of paradigms (nothing in tiedlab names it)."""
    from support.toy import with_changes
    from tiedlab.paradigms.engine import train
    from tiedlab.reports.load import load_runs

    config = with_changes({}, paradigm="support.toy:ToyParadigm", data={}, model={"width": 24},
                          train=dict(batch_size=64, max_steps=10, eval_every=10, ckpt_every=10, progress=False,
                                     log_every=0))
    result = train(config, tmp_path / "run")
    assert result["primary_metric"] == {"name": ToyParadigm.primary_metric, "higher_is_better": True}
    assert result["width"] == {"key": "model.width", "value": 24}
    (run,) = load_runs([tmp_path])
    assert (run.metric, run.higher_is_better, run.width, run.status) == ("acc", True, 24, "completed")


def test_a_solver_and_a_mask_kind_added_to_the_registries_work_from_a_config(monkeypatch):
    """CONTRIBUTING's 'Adding a solver' and 'Adding a mask kind': one registry entry each, and the config's
    solver and mask nodes reach them through the one validated path (config -> BlockSpec.from_dict)."""
    import torch

    from support.cells import TanhCell
    from tiedlab.core import Block, masks, solvers
    from tiedlab.paradigms.config import block_spec
    from tiedlab.paradigms.engine import as_config

    def halving(f, z0, *, max_iter, tol, stop_mode, sample_dims=1, rate=0.5):
        """Damped Picard iteration with its own option (for this test)."""
        return solvers.fixed_point(f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, sample_dims=sample_dims,
                                   damping=rate)

    monkeypatch.setitem(solvers.SOLVERS, "halving", halving)
    monkeypatch.setitem(masks.MASK_KINDS, "diagonal",
                        lambda spec, shape, generator, input_dim: torch.eye(shape[0], shape[1]))
    base = {"seed": 0, "block": {"mode": "deq"}, "mask": {"mode": "shared", "kind": "diagonal"},
            "solver": {"name": "halving", "max_iter": 200, "tol": 1e-8, "options": {"rate": 0.7}}}
    spec = block_spec(as_config(base))
    assert spec.solver.function is halving and spec.mask.kind == "diagonal"
    block = Block(lambda: TanhCell(dim=6, scale=0.9), spec)
    assert torch.equal(block.masks.mask(0, "W"), torch.eye(6, dtype=block.masks.mask(0, "W").dtype))
    z, stats = block(torch.randn(3, 6, dtype=torch.float64))
    assert stats.converged == 1.0
    with pytest.raises(ValueError, match=r"solver 'halving' has no option\(s\) \['damping'\]"):
        block_spec(as_config({**base, "solver": {"name": "halving", "options": {"damping": 0.5}}}))
