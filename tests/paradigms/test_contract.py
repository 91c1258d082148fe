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


def test_a_bundle_that_declares_more_steps_than_it_yields_is_caught():
    """steps_per_epoch sizes a run of train.epochs: an adapter that declares 5 more batches than it yields would
    train 2 epochs as several, unseen; the contract counts one epoch's batches."""
    import dataclasses

    class Overstated(ToyParadigm):
        def build_data(self):
            bundle = super().build_data()
            return dataclasses.replace(bundle, steps_per_epoch=bundle.steps_per_epoch + 5)

    with pytest.raises(AssertionError, match=r"^toy: DataBundle.steps_per_epoch is \d+ but train_batches "
                                             r"yields \d+ batches an epoch"):
        check_paradigm(Overstated, data={}, model={"width": 16}, blocks=("tied",))


def test_an_evaluation_without_its_loss_is_caught():
    """fit/loss is the report's capacity measure: a paradigm that scores its training split (scores_train) but gives
    no train/loss there would show no capacity at all; the contract asks for it."""

    class Scored(ToyParadigm):
        scores_train = True  # the toy's score takes its training split

    class NoLoss(Scored):
        def score(self, model, data, split):
            return {k: v for k, v in super().score(model, data, split).items() if not k.endswith("/loss")}

    check_paradigm(Scored, data={}, model={"width": 16}, blocks=("tied",))
    with pytest.raises(AssertionError, match=r"tied: scores_train is True but evaluate\('train'\) lacks 'train/loss'"):
        check_paradigm(NoLoss, data={}, model={"width": 16}, blocks=("tied",))
