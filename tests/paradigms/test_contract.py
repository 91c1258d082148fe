"""The paradigm contract (``contract.check_paradigm``) on the test-only toy paradigm, written by CONTRIBUTING's
recipe: it passes, and a failure says what to look at."""

from __future__ import annotations

import re

import pytest

from support.toy import ToyParadigm
from tiedlab.paradigms.contract import check_paradigm


def test_the_toy_paradigm_meets_the_contract_in_every_block_mode():
    results = check_paradigm(ToyParadigm, data={}, model={"width": 16})
    assert all(r["last"] < 0.7 * r["first"] for r in results.values()), results


def test_a_batch_that_does_not_overfit_names_the_knobs_and_a_deqs_solve():
    """A DEQ whose map does not contract failed with the losses alone; the message now gives its last solve's
    residual and converged fraction, and the arguments that set the test."""
    with pytest.raises(AssertionError) as err:
        check_paradigm(ToyParadigm, data={}, model={"width": 16}, blocks=("deq_anderson_ift",), lr=0.0)
    text = str(err.value)
    assert re.match(r"deq_anderson_ift: one batch did not overfit in 30 Adam steps at lr 0: ", text), text
    assert re.search(r"the last solve's relative residual [0-9.e-]+, converged fraction [0-9.e-]+", text), text
    assert text.endswith("(check_paradigm's lr, overfit_steps and overfit_ratio set the test)")
    with pytest.raises(AssertionError, match=r"^tied: one batch did not overfit .* not below 0.7x \(check_paradigm"):
        check_paradigm(ToyParadigm, data={}, model={"width": 16}, blocks=("tied",), lr=0.0)
