"""benchmarks/reprobe.py: a finished DEQ run's gradient check, re-probed on its final weights, is the recorded one."""

from __future__ import annotations

import math

import pytest
import torch

from tiedlab.paradigms import rundir
from tiedlab.paradigms.engine import train

from support.benchmarks import load_benchmark
from support.toy import with_changes

TOY = dict(paradigm="support.toy:ToyParadigm", data={}, model={"width": 16}, optim=dict(lr=0.01),
           train=dict(batch_size=64, epochs=None, max_steps=20, eval_every=10, ckpt_every=10, progress=False,
                      log_every=0), block=dict(mode="deq"), equilibrium=dict(power_iters=5))


def test_a_reprobe_on_the_final_weights_reproduces_the_recorded_cosine_and_leaves_the_run_alone(tmp_path, capsys):
    reprobe = load_benchmark("reprobe").reprobe
    threads = torch.get_num_threads()
    result = train(with_changes(TOY), tmp_path / "deq")
    before = {p.name: p.read_bytes() for p in (tmp_path / "deq").iterdir()}
    try:
        again = reprobe(tmp_path / "deq", threads)
    finally:
        torch.set_num_threads(threads)
    assert again["recorded"] == result["metrics"]["eq/grad_cosine"]
    assert (again["trained_in"], again["probed_in"]) == ("fp32", "fp32")
    assert again["blocks"]["eq/grad_cosine"] == pytest.approx(again["recorded"], abs=1e-12)
    assert math.isfinite(again["all_parameters"]["eq/grad_cosine"])
    assert again["all_parameters"]["eq/grad_cosine"] != again["blocks"]["eq/grad_cosine"]  # the head's too
    assert {p.name: p.read_bytes() for p in (tmp_path / "deq").iterdir()} == before  # only read
    other = reprobe(tmp_path / "deq", threads, {"equilibrium.reference_tol": 1e-5, "train.amp": False})
    assert other["blocks"]["eq/grad_cosine"] != again["blocks"]["eq/grad_cosine"]  # a looser reference
    for key in ("model.width", "train.amp_scale"):
        with pytest.raises(ValueError, match=rf"--set {key}: only how the probe measures may change"):
            reprobe(tmp_path / "deq", threads, {key: 8})
    torch.set_num_threads(threads)
    train(with_changes(TOY, block=dict(mode="tied")), tmp_path / "tied")
    with pytest.raises(ValueError, match=r"holds no completed DEQ run \(block.mode=tied, status 'completed'\)"):
        reprobe(tmp_path / "tied", threads)
    assert load_benchmark("reprobe").main([str(tmp_path / "tied"), str(tmp_path / "deq"),
                                           "--threads", str(threads)]) == 2
    printed = capsys.readouterr()
    assert f'"run": "{tmp_path / "deq"}"' in printed.out and printed.err.count("reprobe: ") == 1  # still re-probed
    assert (tmp_path / "deq" / rundir.CHECKPOINT).exists()
