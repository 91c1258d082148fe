"""Re-probe finished DEQ runs on their final weights: the gradient check of their equilibrium health again, over
the DEQ blocks' parameters (what the engine judges, ``EquilibriumProbe.judged_parameters``) and over every
trainable parameter (what it judged before 2026-12-06).

    python benchmarks/reprobe.py RUN_DIR [RUN_DIR ...] [--threads N] [--set train.amp=false ...]

Prints one JSON line per run: its recorded ``eq/grad_cosine``, the re-probed cosines and their references'
residuals, the threads, and the precision the run trained in and the probe took the run's gradient in (a run
trained with bf16 autocast on CUDA and probed on CPU, or with ``train.amp=false``, is probed in fp32).
``--set`` changes how the probe measures, not the model: ``train.amp`` (on CUDA the run's gradient is taken under
bf16 autocast, its references in float32: ``train.amp=false`` takes both in float32 and so tells a flag for
precision from one for the solve), ``train.device`` and the ``equilibrium.*`` settings. ``--threads`` defaults to
the thread count of the run's last training session (its provenance).

The run directory is only read: its config and last checkpoint (a completed run's final weights) are rebuilt in a
temporary folder, with the local logger (a wandb run is not reopened). With the thread count and precision the run
trained with, the blocks' cosine reproduces the recorded one; the order of floating-point sums moves a marginal
run's reading with the threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml


MEASUREMENT_KEYS = ("train.amp", "train.device", "equilibrium.")  # what --set may change (equilibrium.*): not the model


def reprobe(run_dir: Path, threads: int | None = None, changes: dict[str, object] | None = None
            ) -> dict[str, object]:
    """The run's gradient cosines on its final weights at ``threads`` threads (None: its last session's), with the
    measurement settings ``changes`` (see the module docstring)."""
    from omegaconf import OmegaConf

    from tiedlab.paradigms import engine, rundir

    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    metrics = rundir.read_metrics(run_dir)
    mode = (config.get("block") or {}).get("mode")
    if metrics.get("status") != "completed" or mode != "deq":
        raise ValueError(f"{run_dir} holds no completed DEQ run (block.mode={mode}, status {metrics.get('status')!r})")
    if threads is None:
        threads = ((metrics.get("provenance") or [{}])[-1]).get("threads")
        if not isinstance(threads, int):
            raise ValueError(f"{run_dir}: its provenance records no thread count; pass --threads")
    state = rundir.load_checkpoint(run_dir, rundir.fingerprint(config, metrics.get("fingerprint_version", 1)))
    if state is None or state["loop"]["step"] != metrics.get("step"):
        raise ValueError(f"{run_dir}: no checkpoint of its final step {metrics.get('step')}")
    cfg = engine.as_config(config)
    cfg.train.threads = threads
    cfg.train.progress = False
    cfg.logger.name = "local"
    for key, value in (changes or {}).items():
        if not (key in MEASUREMENT_KEYS[:2] or (key.startswith("equilibrium.") and key != "equilibrium.")):
            raise ValueError(f"--set {key}: only how the probe measures may change ({', '.join(MEASUREMENT_KEYS)}*)")
        OmegaConf.update(cfg, key, value, merge=False)
    spec = engine.check_values(cfg)
    out: dict[str, object] = {"run": str(run_dir), "threads": threads, "set": dict(changes or {}),
                              "trained_in": state.get("precision"),
                              "probed_in": rundir.precision(engine.select_device(cfg.train.device),
                                                            bool(cfg.train.amp)),
                              "recorded": (metrics.get("metrics") or {}).get("eq/grad_cosine")}
    with tempfile.TemporaryDirectory() as tmp:
        opened = engine._Opened({}, OmegaConf.to_container(cfg, resolve=True), state["fingerprint"], state, False)
        run = engine._Run(cfg, spec, Path(tmp), opened, [])
        probe = run.probe
        out["blocks"] = probe.grad_cosine(int(cfg.seed))
        probe.judged_parameters = lambda: [p for p in run.model.parameters() if p.requires_grad]
        out["all_parameters"] = probe.grad_cosine(int(cfg.seed))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of completed DEQ runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the run's last training session's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a measurement setting ({', '.join(MEASUREMENT_KEYS)}*), repeatable")
    args = parser.parse_args(argv)
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected KEY=VALUE")
        changes[key] = yaml.safe_load(value)
    failed = 0
    for run_dir in args.runs:  # every run, a failing one said in one line
        try:
            print(json.dumps(reprobe(run_dir, args.threads, changes)), flush=True)
        except (ValueError, OSError) as err:
            print(f"reprobe: {err}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
