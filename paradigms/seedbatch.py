"""Seed batches: K runs of one configuration that differ only in seed, trained in one process as one vectorised
model (``torch.func.vmap`` over the K models' stacked parameters and buffers: grouped convolutions and batched
matrix products instead of K small ones).

Each run keeps everything that makes it a run: its own initialisation, masks, data order (its seed's batches,
stacked along a new leading dimension), optimiser, schedule, run directory, lock, history, evaluations and
checkpoints. Only the forward and backward pass are shared; the gradients land on each run's own parameters (the
stack is differentiable), and each run's optimiser steps them as in a run of its own. A checkpoint is an ordinary
run's checkpoint, so a run can be resumed alone or in another batch. The results equal K separate runs within
floating-point tolerance (tested) when the model draws no random numbers in its forward pass (dropout 0: vmap is
asked to refuse randomness rather than make it differ from a separate run's).

A paradigm opts in with ``Paradigm.seed_batch = True`` (its batch a tensor or a tuple/list/dict of tensors of one
shape for every seed, and its training step free of host reads such as ``.item()``); a solving DEQ cannot be
vectorised (its solver stops on a per-batch residual test) and is refused, like a paradigm that does not opt in.
The time of a shared step is split evenly between the runs (``time/step_ms`` is the cost per seed); a run's
``memory/peak_mb`` is the batch's (one process).

    python -m tiedlab.paradigms.seedbatch --seeds S1,S2,... RUN_DIR1 RUN_DIR2 ... -- OVERRIDES
        (each run composed from OVERRIDES and its seed=S)
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, vmap
from torch.utils import _pytree as pytree

from tiedlab.core import BlockStats

from . import engine, rundir
from .config import check_values
from .engine import _open_run_dir, _Run, _StopSignals, as_config, reset_peak_memory
from .shared_data import shared_data

REPLICATE = ("seed", "run_dir")  # config keys that may differ between the runs of one batch (mask.seed: null only)


def _differences(plain: list[dict[str, Any]]) -> list[str]:
    """The dotted config keys (other than the seed and run directory) whose values differ between the runs."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    flats = [flat({k: v for k, v in p.items() if k not in REPLICATE}) for p in plain]
    keys = set().union(*flats)
    return sorted(k for k in keys if len({repr(f.get(k)) for f in flats}) > 1)


def why_not_batchable(cfg: DictConfig) -> str | None:
    """Why the seeds of ``cfg`` cannot train as one seed batch (None: they can)."""
    from .base import get_paradigm

    allowed = getattr(get_paradigm(cfg.paradigm), "seed_batch", False)
    if allowed is not True:
        why = f": {allowed}" if isinstance(allowed, str) else ""
        return f"the {cfg.paradigm} paradigm does not train seed batches{why} (Paradigm.seed_batch)"
    if str(cfg.block.mode) == "deq":
        return ("a DEQ cannot train in a seed batch: its solver stops on a per-batch residual test, which vmap "
                "cannot split by seed")
    if cfg.train.compile:
        return "train.compile=true compiles one model; a seed batch's vectorised step is not compiled"
    if cfg.train.channels_last:
        return "train.channels_last=true lays out one model's weights; a seed batch's stacked weights are not"
    random = [f"model.{key}={value}" for key, value in cfg.model.items() if key.endswith("dropout") and value]
    if random:
        return (f"{', '.join(random)} draws random numbers in the forward pass, which a seed batch cannot draw per "
                "seed as its separate runs would")
    if cfg.mask.seed is not None:
        return f"mask.seed={cfg.mask.seed} pins one mask for every seed; a seed batch's runs draw their own (mask.seed: null)"
    return None


def check_batchable(cfgs: list[DictConfig]) -> None:
    """Raises ValueError unless the configs are one configuration with distinct seeds that can be vectorised."""
    if len(cfgs) < 2:
        raise ValueError(f"a seed batch needs 2 or more runs, got {len(cfgs)}")
    plain = [OmegaConf.to_container(c, resolve=True) for c in cfgs]
    differ = _differences(plain)
    if differ:
        raise ValueError(f"the runs of a seed batch may differ only in seed; they differ in {differ}")
    seeds = [int(c.seed) for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs of a seed batch need distinct seeds, got {seeds}")
    why = why_not_batchable(cfgs[0])
    if why:
        raise ValueError(f"{why}; run its seeds separately")


def train_seed_batch(cfgs: Sequence[Any], run_dirs: Sequence[str | Path], overrides: Sequence[str] = (),
                     logs: Sequence[rundir.RunLog] | None = None) -> list[dict[str, Any]]:
    """Train (or resume) the runs ``cfgs[i]`` in ``run_dirs[i]`` as one seed batch; returns what each wrote to
    metrics.json. Finished runs are skipped; unfinished ones at different steps (a failure or kill left them there) train
    as one batch per step, one batch after the other. ``logs[i]`` (run i's cli.log) is opened once run i's directory
    is known to be its own (as ``engine.train`` does); the caller closes them.

    Raises:
        ValueError: configs that are not one configuration with distinct seeds, a paradigm or block mode that
            cannot be vectorised; rundir.RunDirError as ``engine.train``.
    """
    cfgs = [as_config(c) for c in cfgs]
    if len(cfgs) != len(run_dirs) or (logs is not None and len(logs) != len(run_dirs)):
        raise ValueError(f"{len(cfgs)} configs and {'no' if logs is None else len(logs)} logs for {len(run_dirs)} run "
                         "directories")
    specs = [check_values(c) for c in cfgs]
    check_batchable(cfgs)
    results: list[dict[str, Any] | None] = [None] * len(cfgs)
    with contextlib.ExitStack() as stack:
        todo = []
        for i, (cfg, run_dir) in enumerate(zip(cfgs, map(Path, run_dirs))):
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(rundir.hold_lock(run_dir))
            opened = _open_run_dir(cfg, run_dir, None if logs is None else functools.partial(logs[i].open, run_dir))
            if opened.finished:
                results[i] = opened.previous
            else:
                todo.append((i, cfg, specs[i], run_dir, opened))
        stop = _StopSignals()  # as engine.train: a SIGTERM/SIGUSR2 waits for a step boundary or the last write
        stack.callback(stop.restore)
        stack.push(lambda kind, err, tb: _deliver_on_error(stop, err))  # runs first: a crash must not swallow a
        # stop that waited
        with shared_data():  # the K runs decode their data once
            runs = [(i, _Run(cfg, spec, run_dir, opened, [*overrides, f"seed={cfg.seed}"], seed_batch=len(todo)))
                    for i, cfg, spec, run_dir, opened in todo]
        at_step: dict[int, list[tuple[int, _Run]]] = {}
        for i, run in runs:  # a batch trains in lockstep: runs a failure or a kill left at other steps train apart
            at_step.setdefault(run.loop.step, []).append((i, run))
        if len(at_step) > 1:
            print(f"[tiedlab] the seed batch's unfinished runs stand at steps {sorted(at_step)}: each step's runs "
                  "train as a batch of their own, one after the other", file=sys.stderr, flush=True)
        for number, group in enumerate(at_step.values()):
            for _, run in group:
                run.sessions[-1]["seed_batch"] = len(group)  # the batch it trains in this session
            if number:  # a later group's peak is its own (every group's model stays in memory, as in one batch)
                reset_peak_memory(group[0][1].device)
            if len(group) == 1:  # nothing to batch with: an ordinary run
                (i, run), = group
                results[i] = run.finish(*run.train(stop))
            else:
                for (i, run), (status, reason) in zip(group, SeedBatch([r for _, r in group]).train(stop)):
                    results[i] = run.finish(status, reason)
    return results  # type: ignore[return-value]


def _deliver_on_error(stop: _StopSignals, err: BaseException | None) -> bool:
    """While an exception ``err`` leaves ``train_seed_batch``: a stop signal that waited for a step boundary is
    delivered now, as if it had not waited (as ``engine.train`` does). Never swallows ``err`` (returns False)."""
    if err is not None:
        stop.deliver(err)
    return False


def _vmappable_attention(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """On CUDA, scaled-dot-product attention in its math form: under vmap the fused kernels' backward rejects the
    batched log-sum-exp's strides (an H200 with torch 2.11: "LSE is not correctly aligned (strideH)"). Elsewhere
    nothing changes."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class _Bound(torch.nn.Module):
    """``base`` as the adapter calls it, on one seed's parameters and buffers (not registered: no copies)."""

    def __init__(self, base: torch.nn.Module, state: dict[str, torch.Tensor]):
        super().__init__()
        self.__dict__["base"], self.state = base, state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.base, self.state, args, kwargs)


class RandomForwardError(ValueError):
    """The model draws random numbers in its forward pass: vmap would make them differ from separate runs'."""


class SeedBatch:
    """The lockstep loop of K ``engine._Run``s: one vectorised forward and backward per step, then each run's own
    update, reads, evaluations and checkpoints (``_Run.update`` / ``_after_step``). A run that diverges or fails
    leaves the batch; the others go on."""

    def __init__(self, runs: list[_Run]):
        self.runs = runs
        self.base = runs[0].model  # functional_call swaps each seed's tensors into this module's structure
        self.param_names = [n for n, _ in self.base.named_parameters()]
        self.buffer_names = [n for n, _ in self.base.named_buffers()]
        self.paradigm = runs[0].paradigm

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batch: Any) -> tuple:
        """One seed's training step inside vmap: (loss, metrics, residual traces (2, depth) or an empty tensor)."""
        out = self.paradigm.training_step(_Bound(self.base, {**params, **buffers}), batch)
        stats = out.stats
        traces = (torch.stack([stats.abs_trace, stats.rel_trace]) if stats is not None
                  and isinstance(stats.abs_trace, torch.Tensor) else out.loss.new_zeros(0))
        metrics = {k: v if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for k, v in out.metrics.items()}
        return out.loss, metrics, traces

    def _stats(self, run: _Run, template: BlockStats | None, traces: torch.Tensor) -> list[BlockStats]:
        if template is None or traces.numel() == 0:
            return []
        return [BlockStats(mode=template.mode, depth=template.depth, nfe_forward=template.nfe_forward,
                           nfe_backward=template.nfe_backward, abs_trace=traces[0].detach(),
                           rel_trace=traces[1].detach(), abs_residual=traces[0, -1].detach(),
                           rel_residual=traces[1, -1].detach(), sparsity=template.sparsity)]

    @staticmethod
    def _share_wait(live: list[_Run]) -> None:
        """Wait for the device's queued work (the whole batch step's) and count it evenly as the runs' training
        time: left to the runs' own reads, the first would wait for all of it and the others for nothing."""
        waited = engine.device_wait(live[0].device)
        for r in live:
            r.add_wait(waited / len(live))

    @staticmethod
    def _will_read(live: list[_Run], stop: "_StopSignals") -> bool:
        """Whether a run of the batch reads its pending steps after the step it just took (``_Run._after_step``'s
        reasons: its step count, a stop signal, its time limit)."""
        return any(r.pending and (r.reads_after(r.loop.step) or bool(stop.received) or r.time_up()) for r in live)

    def train(self, stop: "_StopSignals | None" = None) -> list[tuple[str, str]]:
        """Train every run to its end; returns each run's (status, reason). ``stop``: as ``_Run.train``'s."""
        live = list(self.runs)
        ended: dict[int, tuple[str, str]] = {}
        iterators = {id(r): r.batches() for r in live}
        for r in live:
            r.model.train()
        own = stop is None
        stop = _StopSignals() if stop is None else stop
        step_fn = vmap(self._one, randomness="error")
        try:
            while live and live[0].loop.step < live[0].total_steps:
                for r in list(live):
                    end = r._signalled(stop)
                    if end:
                        ended[id(r)] = end
                        live.remove(r)
                if not live:
                    break
                fetched = time.perf_counter()  # on CUDA the fetch waits for the device: timed as in a run alone
                drawn = [next(iterators[id(r)]) for r in live]
                t0 = fetched if engine.fetch_waits(live[0].device) else time.perf_counter()
                params = {n: torch.stack([r.model.get_parameter(n) for r in live]) for n in self.param_names}
                buffers = {n: torch.stack([r.model.get_buffer(n) for r in live]) for n in self.buffer_names}
                versions = {n: b._version for n, b in buffers.items()}  # an in-place update bumps it
                batch = pytree.tree_map(lambda *xs: torch.stack(xs), *[d[2] for d in drawn])
                for r in live:
                    r.optimizer.zero_grad(set_to_none=True)
                try:
                    with live[0].autocast, _vmappable_attention(live[0].device):  # bf16 on CUDA, as alone
                        losses, metrics, traces = step_fn(params, buffers, batch)
                except RuntimeError as err:
                    if "randomness" in str(err):
                        raise RandomForwardError("the model draws random numbers in its forward pass (dropout?): a seed "
                                         "batch cannot reproduce separate runs; set the dropout to 0 or run the "
                                         "seeds separately") from err
                    raise
                template = self.runs[0].recorder.take()  # the base model's hooks saw the vectorised call
                losses.sum().backward()
                with torch.no_grad():  # buffers the forward updated in place (a spectral norm's power-iteration
                    for n, stacked in buffers.items():  # vectors; not the masks) go back to each run's own
                        if stacked._version != versions[n]:
                            for k, r in enumerate(live):
                                r.model.get_buffer(n).copy_(stacked[k])
                seconds = (time.perf_counter() - t0) / len(live)
                if any(r.progress is not None for r in live):  # their updates read at once: wait for the batch first
                    self._share_wait(live)
                stepped, stopped = list(live), {}
                for k, r in enumerate(stepped):
                    r.recorder.take()
                    try:
                        stopped[k] = r.update(seconds, losses[k].detach(),
                                              {n: v[k].detach() for n, v in metrics.items()},
                                              self._stats(r, template[0] if template else None, traces[k]), stop)
                    except Exception as err:  # noqa: BLE001 - one run's crash fails that run, not the batch
                        ended[id(r)] = ("failed", r.crash_reason(err))
                        live.remove(r)
                if self._will_read(live, stop):  # the reads below wait for the device: share the wait first
                    self._share_wait(live)
                for k, r in enumerate(stepped):
                    if id(r) in ended:
                        continue
                    try:
                        end = r._after_step(stopped[k], drawn[k][0], drawn[k][1], stop)
                    except Exception as err:  # noqa: BLE001
                        end = ("failed", r.crash_reason(err))
                    if end:
                        ended[id(r)] = end
                        live.remove(r)
        except RandomForwardError:
            raise
        except Exception as err:  # noqa: BLE001 - a crash of the shared step fails every run still in the batch
            for r in live:
                ended.setdefault(id(r), ("failed", r.crash_reason(err)))
        finally:
            if own:
                stop.restore()
        return [ended.get(id(r), ("completed", "")) for r in self.runs]


def main(argv: list[str] | None = None) -> int:
    """``python -m tiedlab.paradigms.seedbatch --seeds S1,S2,... RUN_DIR1 RUN_DIR2 ... -- OVERRIDES``: the runs in
    RUN_DIR..., each composed from OVERRIDES plus its own seed (given, not read from the directory's name, which
    ``rundir.short_dirname`` may have cut)."""
    from .cli import compose_config
    from .launch import _quoted

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m tiedlab.paradigms.seedbatch --seeds S1,S2,... RUN_DIR1 RUN_DIR2 ... -- OVERRIDES"
    if "--" not in argv or len(argv) < 2 or argv[0] != "--seeds":
        print(usage, file=sys.stderr)
        return 2
    cut = argv.index("--")
    seeds, run_dirs, overrides = argv[1].split(","), argv[2:cut], argv[cut + 1:]
    try:
        if len(seeds) != len(run_dirs) or not all(_is_int(s) for s in seeds):
            raise ValueError(f"--seeds {argv[1]} must give one integer seed per run directory ({len(run_dirs)} given)")
        cfgs = [compose_config([*overrides, f"seed={seed}", f"run_dir={_quoted(d)}"])
                for seed, d in zip(seeds, run_dirs)]
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    logs = [rundir.RunLog() for _ in run_dirs]  # each run's cli.log, opened once its directory is the run's
    try:
        return _train_and_report(cfgs, run_dirs, overrides, logs)
    finally:
        for log in logs:
            log.close()


def _train_and_report(cfgs: list[DictConfig], run_dirs: list[str], overrides: list[str],
                      logs: list[rundir.RunLog]) -> int:
    """``main``'s batch: trained, each outcome printed and noted in its run's log; the exit status."""
    def say(line: str, which: Sequence[rundir.RunLog] = logs) -> None:
        print(line, file=sys.stderr)
        for log in which:
            log.note(line)  # only in the logs that opened (the runs whose directories were theirs)

    try:
        results = train_seed_batch(cfgs, run_dirs, overrides, logs)
    except (ValueError, OSError) as err:
        say(f"error: {err}")
        return 1
    except KeyboardInterrupt:  # run by hand (the study runner starts it in a session of its own, out of Ctrl-C's way)
        from .cli import CTRL_C_EXIT

        say(f"[tiedlab] stopped by Ctrl-C: the batch's runs were not checkpointed now; rerunning the same command "
            f"resumes each from its last checkpoint, or starts it again if it had none ({', '.join(run_dirs)})")
        return CTRL_C_EXIT
    for d, r, log in zip(run_dirs, results, logs):
        say(f"[tiedlab] {d}: {r.get('status')}{' (' + r['reason'] + ')' if r.get('reason') else ''}", [log])
    from .launch import INTERRUPTED_EXIT

    if any(r.get("status") == "interrupted" for r in results):
        return INTERRUPTED_EXIT  # signalled: checkpointed, resumable (as a single run's exit status says)
    return 1 if any(r.get("status") == "failed" for r in results) else 0  # as a single run: diverged is a result


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
