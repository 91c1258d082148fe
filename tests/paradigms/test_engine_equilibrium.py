"""A DEQ run's equilibrium health, measured by the engine, and the weight-tied warm-up before the solver."""

from __future__ import annotations

import json

import pytest
import torch

from tiedlab.paradigms import rundir
from tiedlab.paradigms.engine import _Run, train

from support.toy import with_changes

TOY = "support.toy:ToyParadigm"
LOOP = dict(batch_size=64, epochs=None, max_steps=30, eval_every=10, ckpt_every=10, progress=False, log_every=0)
BASE = dict(paradigm=TOY, data={}, model={"width": 16}, train=LOOP, optim=dict(lr=0.01), block=dict(mode="deq"),
            equilibrium=dict(power_iters=10))
EQ_KEYS = ("eq/rel_residual", "eq/converged_fraction", "eq/spectral_norm", "eq/grad_cosine", "eq/grad_cosine_ift")


def cfg(**changes):
    return with_changes(BASE, **changes)


def _weights(run_dir):
    return torch.load(run_dir / rundir.CHECKPOINT, weights_only=True)["model"]


def test_a_solved_deq_records_its_health_at_every_evaluation_and_is_at_equilibrium(tmp_path):
    result = train(cfg(), tmp_path)
    history = rundir.read_history(tmp_path)
    assert [h["step"] for h in history] == [10, 20, 30]
    for record in history:
        assert set(EQ_KEYS) <= set(record), sorted(record)
    eq = result["equilibrium"]
    assert eq["at_equilibrium"] and eq["flags"] == []
    assert eq["measured"]["rel_residual"] <= 1e-2 and eq["measured"]["converged_fraction"] >= 0.9
    assert eq["measured"]["grad_cosine"] >= 0.95
    assert eq["thresholds"] == {"rel_residual": 0.01, "converged_fraction": 0.9, "grad_cosine": 0.95,
                                "spectral_norm": None}
    assert eq["measured_with"] == {"reference_tol": 1e-6, "reference_max_iter": 300}  # the gradient's reference
    assert json.loads((tmp_path / rundir.METRICS).read_text())["equilibrium"] == eq


def test_health_counts_every_validation_batch_not_the_first_alone(tmp_path):
    """The validation split scored in two batches of 100, the second poisoned: its 100 systems do not converge, so
    half the split is off equilibrium (a probe that kept the first batch alone certified the run)."""
    whole = train(cfg(data=dict(val_batch=100), train={**LOOP, "max_steps": 10}), tmp_path / "whole")
    assert whole["equilibrium"]["measured"]["systems"] == 200 and whole["equilibrium"]["at_equilibrium"]
    half = train(cfg(data=dict(val_batch=100, nan_val_from=100), train={**LOOP, "max_steps": 10}), tmp_path / "half")
    measured = half["equilibrium"]["measured"]
    assert measured["systems"] == 200 and measured["converged_fraction"] == 0.5
    assert not half["equilibrium"]["at_equilibrium"]
    assert any(f.startswith("converged_fraction") for f in half["equilibrium"]["flags"])
    # a run killed in its final evaluation evaluates val and test in one go on resuming: test is not captured
    (tmp_path / "whole" / rundir.METRICS).unlink()
    again = train(cfg(data=dict(val_batch=100), train={**LOOP, "max_steps": 10}), tmp_path / "whole")
    assert again["equilibrium"]["measured"]["systems"] == 200


def test_a_deq_stopped_after_three_solver_steps_is_flagged_not_at_equilibrium(tmp_path, capsys):
    result = train(cfg(solver=dict(max_iter=3), grad=dict(mode="onestep")), tmp_path)
    assert result["status"] == "completed"
    eq = result["equilibrium"]
    assert not eq["at_equilibrium"]
    named = {flag.split()[0] for flag in eq["flags"]}
    assert {"rel_residual", "converged_fraction", "grad_cosine"} <= named
    assert eq["measured"]["rel_residual"] > 0.1 and eq["measured"]["grad_cosine"] < 0.9
    assert "is not at equilibrium" in capsys.readouterr().err


def test_probes_do_not_change_what_the_run_trains(tmp_path):
    """Gradient probes at every evaluation (restored RNG and buffers) against none: the same weights."""
    dropout = dict(block=dict(mode="deq", norm="spectral"))  # spectral norm: buffers a probe would move
    probed = train(cfg(**dropout), tmp_path / "probed")
    plain = train(cfg(**dropout, equilibrium=dict(probe_every=0)), tmp_path / "plain")
    for name, tensor in _weights(tmp_path / "probed").items():
        assert torch.equal(tensor, _weights(tmp_path / "plain")[name]), name
    assert probed["metrics"]["val/loss"] == plain["metrics"]["val/loss"]
    assert "eq/grad_cosine" not in plain["metrics"] and "grad_cosine" not in plain["equilibrium"]["measured"]
    assert plain["equilibrium"]["thresholds"]["grad_cosine"] is None  # never probed: not checked, and said so
    assert plain["equilibrium"]["measured_with"] == {}  # nor measured with a reference


def test_the_gradient_probe_compares_the_deq_blocks_parameters_only(tmp_path, monkeypatch):
    """The cosine is over the DEQ block's weight and bias (the backward mode's output), not the stem's and head's: the
    head's gradient barely depends on the solve and would dilute a wrong block gradient."""
    from tiedlab.paradigms import engine

    compared, real = [], engine.gradient_cosine

    def spy(a, b):
        compared.append([tuple(g.shape) for g in a])
        return real(a, b)

    monkeypatch.setattr(engine, "gradient_cosine", spy)
    train(cfg(equilibrium=dict(probe_every=30)), tmp_path)
    assert compared and all(shapes == [(16, 16), (16,)] for shapes in compared), compared


def test_probe_every_sets_the_gradient_probes_steps_and_the_last_evaluation_always_probes(tmp_path):
    train(cfg(equilibrium=dict(probe_every=20)), tmp_path)
    probed = [h["step"] for h in rundir.read_history(tmp_path) if "eq/grad_cosine" in h]
    assert probed == [20, 30]  # 20 steps from the start, then the end
    train(cfg(equilibrium=dict(probe_every=30)), tmp_path / "end")
    assert [h["step"] for h in rundir.read_history(tmp_path / "end") if "eq/grad_cosine" in h] == [30]


def test_validate_from_skips_validation_and_probes_early_but_keeps_the_training_window(tmp_path):
    """validate_from=0.6 of 30 steps: step 10 records the training window only, 20 and 30 validate and probe; the
    run trains the same weights and ends with the same scores as one validated at every evaluation, also when its
    Hutchinson Jacobian penalty draws from the global generator and so does evaluation (as a DataLoader does)."""
    penalty = dict(block=dict(mode="deq", jacobian_samples=1), data=dict(eval_draws_rng=True))
    late = train(cfg(**penalty, train=dict(LOOP, validate_from=0.6, jacobian_weight=0.1)), tmp_path / "late")
    every = train(cfg(**penalty, train=dict(LOOP, jacobian_weight=0.1)), tmp_path / "every")
    history = rundir.read_history(tmp_path / "late")
    assert [h["step"] for h in history] == [10, 20, 30]
    assert all("train/loss" in h for h in history)
    assert [("val/loss" in h, "eq/rel_residual" in h, "eq/grad_cosine" in h) for h in history] == [
        (False, False, False), (True, True, True), (True, True, True)]
    for name, tensor in _weights(tmp_path / "late").items():
        assert torch.equal(tensor, _weights(tmp_path / "every")[name]), name
    assert late["metrics"]["val/loss"] == every["metrics"]["val/loss"]
    # the same health (the spectral-norm estimate is a power iteration from a random start: compared to 1e-3)
    assert late["equilibrium"]["flags"] == every["equilibrium"]["flags"] == []
    assert late["metrics"]["eq/grad_cosine"] == every["metrics"]["eq/grad_cosine"]
    assert late["metrics"]["eq/spectral_norm"] == pytest.approx(every["metrics"]["eq/spectral_norm"], rel=1e-3)


def test_a_one_step_gradient_is_judged_against_its_own_mode_and_its_distance_to_ift_recorded(tmp_path):
    """JFB ignores the Jacobian by design: at equilibrium its gradient equals its tight-solve self (cosine ~1) while
    its cosine with the implicit gradient is recorded apart, below the IFT run's."""
    jfb = train(cfg(grad=dict(mode="onestep")), tmp_path / "jfb")["equilibrium"]["measured"]
    ift = train(cfg(), tmp_path / "ift")["equilibrium"]["measured"]
    assert jfb["grad_cosine"] >= 0.99 and jfb["grad_cosine_ift"] < jfb["grad_cosine"]
    assert jfb["grad_cosine_ift"] < ift["grad_cosine_ift"]


def test_the_runs_gradient_is_probed_in_the_runs_precision_and_the_references_in_full(tmp_path, monkeypatch):
    """On CUDA the steps run under bf16 autocast: the probe's "run" gradient does too (what bf16 does to the layers
    around the DEQ must show), its tight references do not. A counting stand-in for the autocast context on CPU."""
    from tiedlab.paradigms import engine

    entered = {"n": 0}

    class Counted:  # reusable, as torch.autocast is
        def __enter__(self):
            entered["n"] += 1

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(engine, "_autocast", lambda device, amp: Counted())
    counts = {}
    for name, every in (("probed", None), ("plain", 0)):
        entered["n"] = 0
        assert train(cfg(equilibrium=dict(power_iters=10, probe_every=every)), tmp_path / name)["status"] == "completed"
        counts[name] = entered["n"]
    probes = [h["step"] for h in rundir.read_history(tmp_path / "probed") if "eq/grad_cosine" in h]
    assert probes == [10, 20, 30]
    assert counts["plain"] == 30  # one per training step
    assert counts["probed"] == 30 + len(probes)  # and one per probe: the run's gradient alone, not its references


def test_warm_up_unrolls_the_map_then_solves_it(tmp_path):
    train(cfg(train=dict(LOOP, deq_warmup_steps=15, deq_warmup_depth=3)), tmp_path)
    history = rundir.read_history(tmp_path)
    assert history[0]["core/nfe_forward"] == 3.0 and "eq/rel_residual" not in history[0]  # steps 1-10 unrolled
    assert history[1]["core/nfe_forward"] > 3.0 and "eq/rel_residual" in history[1]  # steps 16-20 solve


def test_a_deq_run_reports_its_solves_statistics_not_its_warm_up_steps(tmp_path, monkeypatch):
    """metrics.json's core/* of a DEQ are over the steps that solved: the warm-up's unrolled steps (NFE = the
    warm-up depth) would understate its NFE and mix unrolled residuals into the solve's."""
    from tiedlab.paradigms import engine

    per_step, real = [], engine.summarize

    def spy(stats, prefix="core/"):
        out = real(stats, prefix)
        if prefix == "core/":
            per_step.append(out["core/nfe_forward"])
        return out

    monkeypatch.setattr(engine, "summarize", spy)
    metrics = train(cfg(train=dict(LOOP, deq_warmup_steps=15, deq_warmup_depth=3)), tmp_path)["metrics"]
    assert len(per_step) == 30 and per_step[:15] == [3.0] * 15
    assert metrics["core/nfe_forward"] == pytest.approx(sum(per_step[15:]) / 15)
    assert metrics["core/nfe_forward"] > sum(per_step) / 30  # a solve costs more than 3 unrolled layers here


def spy_on_steps(monkeypatch) -> list[tuple[float, float | None]]:
    """(task loss, Hutchinson Jacobian estimate or None) of every training step the toy paradigm takes from now on."""
    from support.toy import ToyParadigm

    seen, real = [], ToyParadigm.training_step

    def spy(self, model, batch):
        out = real(self, model, batch)
        estimate = out.stats.jacobian_loss
        seen.append((out.loss.item(), None if estimate is None else estimate.item()))
        return out

    monkeypatch.setattr(ToyParadigm, "training_step", spy)
    return seen


def test_a_penalised_deq_records_its_task_loss_as_train_loss_and_its_penalty_apart(tmp_path, monkeypatch):
    """train/loss is the task loss alone (comparable with a tied run's; it does not jump when the penalty starts after
    the warm-up); the Jacobian estimate the step also optimised (x train.jacobian_weight) is core/jacobian_loss,
    averaged over the window in history and over the solving steps in metrics.json."""
    from statistics import fmean

    seen = spy_on_steps(monkeypatch)
    penalised = cfg(block=dict(mode="deq", jacobian_samples=1), equilibrium=dict(probe_every=0),  # no probe steps
                    train=dict(LOOP, jacobian_weight=1.0, deq_warmup_steps=5))
    metrics = train(penalised, tmp_path)["metrics"]
    assert len(seen) == 30 and all(e is None for _, e in seen[:5]) and all(e > 0 for _, e in seen[5:])
    history = rundir.read_history(tmp_path)
    for record, window in zip(history, (seen[:10], seen[10:20], seen[20:])):
        assert record["train/loss"] == pytest.approx(fmean(loss for loss, _ in window), rel=1e-12)
        assert record["core/jacobian_loss"] == pytest.approx(fmean(e for _, e in window if e is not None), rel=1e-12)
    assert metrics["core/jacobian_loss"] == pytest.approx(fmean(e for _, e in seen[5:]), rel=1e-12)


def test_a_non_finite_jacobian_penalty_still_ends_the_run_as_diverged(tmp_path, monkeypatch):
    """The divergence check reads the loss the step optimised: a finite task loss with a NaN penalty diverges; the
    same NaN estimate that is only logged (train.jacobian_weight=0) does not end the run."""
    from support.toy import ToyParadigm

    real = ToyParadigm.training_step

    def poisoned(self, model, batch):
        out = real(self, model, batch)
        if self.steps > 12:
            out.stats.jacobian_loss = out.stats.jacobian_loss * float("nan")
        return out

    monkeypatch.setattr(ToyParadigm, "training_step", poisoned)
    block, probes = dict(mode="deq", jacobian_samples=1), dict(probe_every=0)  # no probe's steps in the count
    result = train(cfg(block=block, equilibrium=probes, train=dict(LOOP, jacobian_weight=1.0)), tmp_path / "penalised")
    assert (result["status"], result["step"]) == ("diverged", 12)
    assert result["reason"].startswith("non-finite loss (nan: the task loss ") and result["reason"].endswith(
        "plus train.jacobian_weight=1 x core/jacobian_loss=nan) at step 13")
    logged = train(cfg(block=block, equilibrium=probes, train=dict(LOOP, max_steps=15)), tmp_path / "logged")
    assert logged["status"] == "completed"


def test_residual_growth_counts_a_non_finite_residual_anywhere_in_the_solve():
    from tiedlab.paradigms.engine import _growth

    assert _growth([1.0, 2.0, 0.5]) == 2.0
    assert _growth([1.0, 2.0, float("nan"), float("nan")]) == float("inf")  # max() alone gave 2.0
    assert _growth([float("nan"), 1.0]) == float("inf") and _growth([1.0, float("inf")]) == float("inf")
    assert _growth([]) != _growth([])  # nan: no trace


def crash_then_resume(config, run_dir, monkeypatch, at: int, between=lambda: None) -> None:
    """Train ``config`` into ``run_dir`` until a crash after step ``at`` (asserted: the run failed there), call
    ``between()``, then rerun it to completion from its last checkpoint."""
    step = _Run._step

    def crash(self, batch, *args, **kwargs):
        if self.loop.step == at:
            raise RuntimeError("simulated crash")
        return step(self, batch, *args, **kwargs)

    monkeypatch.setattr(_Run, "_step", crash)
    failed = train(config, run_dir)
    assert failed["status"] == "failed" and "simulated crash" in failed["reason"]  # where it was meant to
    monkeypatch.setattr(_Run, "_step", step)
    between()
    assert train(config, run_dir)["status"] == "completed"


@pytest.mark.parametrize("crash_at", [12, 22])
def test_the_warm_up_switch_resumes_exactly(tmp_path, monkeypatch, crash_at):
    """A run that crashes in (12) or after (22) the warm-up, rerun from its step-10/20 checkpoint, ends with the
    weights of an uninterrupted one."""
    config = cfg(train=dict(LOOP, deq_warmup_steps=15))
    train(config, tmp_path / "whole")
    crash_then_resume(config, tmp_path / "crashed", monkeypatch, crash_at)
    for name, tensor in _weights(tmp_path / "whole").items():
        assert torch.equal(tensor, _weights(tmp_path / "crashed")[name]), name


def test_the_gradient_probe_schedule_resumes_with_the_run(tmp_path, monkeypatch):
    """equilibrium.probe_every: a run resumed from a checkpoint probes the gradient at the steps an uninterrupted
    one does (the step of the last probe is part of the checkpoint)."""
    config = cfg(train=dict(LOOP, max_steps=50), equilibrium=dict(power_iters=10, probe_every=15))
    train(config, tmp_path / "whole")
    crash_then_resume(config, tmp_path / "crashed", monkeypatch, 22)
    probed = lambda run: [h["step"] for h in rundir.read_history(run) if "eq/grad_cosine" in h]
    assert probed(tmp_path / "whole") == [20, 40, 50]  # 15 steps since the last probe, and the end
    assert probed(tmp_path / "crashed") == probed(tmp_path / "whole")


def phase_clock(monkeypatch) -> None:
    """The engine's clock made a step counter: a training step takes 1 s while the toy DEQ warms up (its block
    unrolled) and 3 s once it solves; nothing else moves the clock."""
    import types

    from support.toy import ToyParadigm
    from tiedlab.paradigms import engine

    clock, real = [0.0], ToyParadigm.training_step

    def timed(self, model, batch):
        clock[0] += 1.0 if model.block.warmup_depth else 3.0
        return real(self, model, batch)

    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(ToyParadigm, "training_step", timed)


@pytest.mark.parametrize("crash_at", [None, 12, 22])
def test_a_deq_run_times_its_solving_steps_apart_from_its_warm_up(tmp_path, monkeypatch, crash_at):
    """time/step_ms stays every step's mean (warm-up included); time/solve_step_ms and time/warmup_step_ms are the
    two phases' (the steps' mean, weighted, is time/step_ms), also in a run resumed in (12) or after (22) its warm-up
    from its step-10/20 checkpoint."""
    phase_clock(monkeypatch)
    config = cfg(train=dict(LOOP, deq_warmup_steps=15), equilibrium=dict(probe_every=0))  # no probe's steps
    if crash_at is None:
        assert train(config, tmp_path)["status"] == "completed"
    else:
        crash_then_resume(config, tmp_path, monkeypatch, crash_at)
    metrics = json.loads((tmp_path / rundir.METRICS).read_text())["metrics"]
    assert metrics["time/warmup_step_ms"] == pytest.approx(1000.0) and metrics["time/solve_step_ms"] == pytest.approx(
        3000.0)
    assert metrics["time/step_ms"] == pytest.approx((15 * 1000.0 + 15 * 3000.0) / 30)


def test_a_run_resumed_from_a_checkpoint_without_its_warm_up_time_leaves_the_phase_times_out(tmp_path, monkeypatch):
    """A checkpoint written before the loop kept the warm-up's time: the phases cannot be told apart, so neither
    phase time is recorded (not a split that counts the warm-up as solving); time/step_ms is."""
    phase_clock(monkeypatch)
    config = cfg(train=dict(LOOP, deq_warmup_steps=15), equilibrium=dict(probe_every=0))

    def forget_the_warm_up_time():
        state = torch.load(tmp_path / rundir.CHECKPOINT, weights_only=True)
        del state["loop"]["warmup_s"]
        rundir.save_checkpoint(tmp_path, {k: v for k, v in state.items() if k != "format"})

    crash_then_resume(config, tmp_path, monkeypatch, 12, between=forget_the_warm_up_time)
    metrics = json.loads((tmp_path / rundir.METRICS).read_text())["metrics"]
    assert metrics["time/step_ms"] == pytest.approx((15 * 1000.0 + 15 * 3000.0) / 30)
    assert not {"time/solve_step_ms", "time/warmup_step_ms"} & set(metrics)


def test_every_deq_run_records_its_solving_step_time_and_only_a_warm_up_its_own(tmp_path, monkeypatch):
    """Without a warm-up time/solve_step_ms is time/step_ms and there is no time/warmup_step_ms; a tied run has
    neither."""
    phase_clock(monkeypatch)
    deq = train(cfg(equilibrium=dict(probe_every=0)), tmp_path / "deq")["metrics"]
    assert deq["time/solve_step_ms"] == deq["time/step_ms"] == pytest.approx(3000.0)
    assert "time/warmup_step_ms" not in deq
    tied = train(cfg(block=dict(mode="tied")), tmp_path / "tied")["metrics"]
    assert not {"time/solve_step_ms", "time/warmup_step_ms"} & set(tied)


def test_a_warm_up_as_long_as_the_run_is_refused(tmp_path):
    """Before any data is loaded when the run names its steps (config validation), else once the epochs are
    counted in steps (the engine)."""
    with pytest.raises(ValueError, match=r"deq_warmup_steps=30 must be below train.max_steps=30"):
        train(cfg(train=dict(LOOP, deq_warmup_steps=30)), tmp_path / "steps")
    with pytest.raises(ValueError, match=r"deq_warmup_steps=30000 must be below the run's \d+ steps"):
        train(cfg(train=dict(LOOP, max_steps=None, epochs=1, deq_warmup_steps=30000)), tmp_path / "epochs")


def test_a_warm_up_depth_that_is_no_multiple_of_the_distinct_masks_is_refused(tmp_path):
    """A DEQ with K distinct masks solves f_K o ... o f_1; its warm-up unrolls masks 0, 1, ... cyclically, so a depth
    that is no multiple of K ends on another mask (6 of K=4: on mask 1) and trains the head on another state. Refused
    before any data is loaded; the default (block.depth = K), its multiples and any depth of a one-map DEQ pass."""
    from tiedlab.paradigms.config import validate
    from tiedlab.paradigms.engine import as_config

    distinct = {"block.depth": 4, "mask.mode": "distinct", "mask.sparsity": 0.5, "train.deq_warmup_steps": 5}
    with pytest.raises(ValueError, match=r"^train.deq_warmup_depth=6 must be a multiple of the DEQ's K=4 distinct "
                                         r"masks .*end on mask 1, the solved map on mask 3; choose 4, 8, \.\.\. or null"):
        train(cfg(**distinct, **{"train.deq_warmup_depth": 6}), tmp_path)
    assert not (tmp_path / rundir.CHECKPOINT).exists()
    for depth in (None, 4, 8):
        assert validate(as_config(cfg(**distinct, **{"train.deq_warmup_depth": depth}))).cycle == 4
    assert validate(as_config(cfg(**{"train.deq_warmup_steps": 5, "train.deq_warmup_depth": 3}))).cycle == 1
    assert validate(as_config(cfg(**{**distinct, "mask.mode": "shared", "train.deq_warmup_depth": 3}))).cycle == 1
    with pytest.raises(ValueError, match=r"deq_warmup_depth=3 must be a multiple of the DEQ's K=2 distinct masks "
                                         r"\(block.depth, mask.mode=disjoint\)"):
        validate(as_config(cfg(**{"block.depth": 2, "mask.mode": "disjoint", "train.deq_warmup_steps": 5,
                                  "train.deq_warmup_depth": 3})))
    # without warm-up steps the depth is unread (named as ignored), not refused
    assert validate(as_config(cfg(**{**distinct, "train.deq_warmup_steps": 0, "train.deq_warmup_depth": 6}))).cycle == 4


def test_warm_up_of_a_tied_block_is_named_as_ignored_and_left_out_of_the_fingerprint(tmp_path, capsys):
    tied = dict(block=dict(mode="tied"))
    a = train(cfg(**tied, train=dict(LOOP, deq_warmup_steps=5)), tmp_path / "a")
    assert "train.deq_warmup_steps=5 ignored" in capsys.readouterr().err
    b = train(cfg(**tied), tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"] and "equilibrium" not in a


def test_the_gradient_probes_reference_is_tighter_than_the_run_and_its_residual_is_recorded(tmp_path):
    """The reference solves may not be looser or shorter than the run's (the cosine would compare a gradient with
    a worse one); how far they got is recorded."""
    with pytest.raises(ValueError, match=r"reference_tol=0.001 must be below solver.tol=0.001 and grad.tol=0.0001"):
        train(cfg(equilibrium=dict(reference_tol=1e-3)), tmp_path / "loose")
    with pytest.raises(ValueError, match=r"reference_max_iter=20 must be at least solver.max_iter=40"):
        train(cfg(solver=dict(max_iter=40), equilibrium=dict(reference_max_iter=20)), tmp_path / "short")
    # what the reference never reads is not checked: an eval budget, a run to its budget (tol 0), no probe at all
    from tiedlab.paradigms.config import validate
    from tiedlab.paradigms.engine import as_config

    for fine in (dict(solver=dict(eval_max_iter=500)), dict(solver=dict(tol=0.0)),
                 dict(equilibrium=dict(reference_tol=1e-2, probe_every=0))):
        validate(as_config(cfg(**fine)))
    assert train(cfg(grad=dict(mode="phantom"), equilibrium=dict(reference_tol=1e-5)), tmp_path / "phantom")
    eq = train(cfg(train={**LOOP, "max_steps": 10}), tmp_path / "run")["equilibrium"]
    reached = eq["measured"]["reference_rel_residual"]
    assert 0 < reached <= 1e-6  # the toy's contraction lets the reference solves reach their tolerance
    capped = train(cfg(train={**LOOP, "max_steps": 10}, solver=dict(max_iter=4), grad=dict(max_iter=4),
                       equilibrium=dict(reference_max_iter=4)), tmp_path / "capped")
    assert capped["equilibrium"]["measured"]["reference_rel_residual"] > 1e-4  # stopped by its budget first
