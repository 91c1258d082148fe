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
