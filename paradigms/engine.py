"""The one training loop every paradigm shares.

``train(cfg, run_dir)`` builds the paradigm's data and model, trains with the configured optimiser and
schedule, evaluates every ``train.eval_every`` steps (validating from ``train.validate_from`` of the steps on)
and at the end, checkpoints atomically every ``train.ckpt_every`` steps, resumes from the run directory's
checkpoint, and writes the run directory contract (see ``rundir``), holding its lock. A non-finite loss or an
exploding solver residual ends the run with status ``diverged``: instability is a result, not a crash. A crash in
the loop (an exception, a full disk) ends it with status ``failed`` and the reason. SIGUSR2 or SIGTERM (and, for
the command line's runs, Ctrl-C or a hang-up) checkpoints at the next step and ends it with status ``interrupted``
(rerun to resume; the command line exits with ``INTERRUPTED_EXIT``, 130 after Ctrl-C). Under ``torchrun`` one run
trains data-parallel over several processes (see ``distributed``): rank 0 alone writes and evaluates.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tiedlab.core import Block, BlockSpec, BlockStats, GradSpec, SolverSpec, model_param_counts
from tiedlab.core.equilibrium import equilibrium_flags, gradient_cosine

from . import distributed, rundir
from .base import DataBundle, Paradigm, epoch_generator, get_paradigm, on_the_record
from .config import TrainConfig, check_values, ignored_options, measurement_values, thresholds
from .provenance import now, run_provenance
from .tracking import LocalTracker, make_tracker


def as_config(cfg: Any) -> DictConfig:
    """A DictConfig checked against the TrainConfig schema (accepts a dict, DictConfig or TrainConfig)."""
    schema = OmegaConf.structured(TrainConfig)
    merged = OmegaConf.merge(schema, cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg))
    OmegaConf.resolve(merged)
    return merged


def fingerprint(cfg: DictConfig) -> str:
    """A hash of everything in the config that changes what the run computes (``rundir.fingerprint``)."""
    return rundir.fingerprint(OmegaConf.to_container(cfg, resolve=True))


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but CUDA is not available; use train.device=auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA's allocator statistics, and on Linux the process's VmHWM (clear_refs 5),
    so that runs sharing a process (tests, the basic multirun launcher) each get their own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on GPU; the process peak resident set size on CPU (since the last reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (decoupled decay), Adam (coupled L2: decay added to the gradient, as in the GCN recipe) or SGD;
    weight decay only on weights with >= 2 dims (not norms, biases or gains: a weight norm's gain keeps its
    weight's rank, (out, 1, ...), so it is named, not told by its dims)."""
    from tiedlab.core.norms import WeightNorm

    gains = {id(m.gain) for m in model.modules() if isinstance(m, WeightNorm)}
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.dim() >= 2 and id(p) not in gains]
    no_decay = [p for p in trained if p.dim() < 2 or id(p) in gains]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` of the peak at ``total``."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class StatsRecorder:
    """Collects the BlockStats of every Block call (through forward hooks; not those ``off_the_record``)."""

    def __init__(self, model: nn.Module):
        self.calls: list[BlockStats] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, Block)]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], BlockStats) and on_the_record():
            self.calls.append(output[1])

    def take(self) -> list[BlockStats]:
        calls, self.calls = self.calls, []
        return calls

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def summarize(stats: list[BlockStats], prefix: str = "core/") -> dict[str, float]:
    """Mean NFE, residuals and converged fraction over block calls (residuals still on the device are read here)."""
    if not stats:
        return {}
    stats = [s.resolve() for s in stats]
    def mean(values: list[float]) -> float:
        vals = [v for v in values if not math.isnan(v)]
        return float(sum(vals) / len(vals)) if vals else float("nan")
    return {
        f"{prefix}nfe_forward": mean([s.nfe_forward for s in stats]),
        f"{prefix}nfe_backward": mean([s.nfe_backward for s in stats]),
        f"{prefix}abs_residual": mean([s.abs_residual for s in stats]),
        f"{prefix}rel_residual": mean([s.rel_residual for s in stats]),
        f"{prefix}converged": mean([s.converged for s in stats]),
        f"{prefix}adjoint_rel_residual": mean([s.adjoint_rel_residual for s in stats]),
        f"{prefix}sparsity": mean([s.sparsity for s in stats]),
        # How far the residual grew during a solve (max over the trace / first): > 1 means it blew up; a non-finite
        # residual anywhere in the trace is infinite growth (Python's max would skip a NaN after the first entry).
        f"{prefix}residual_growth": mean([_growth(s.abs_trace) for s in stats]),
    }


def _growth(trace: Sequence[float]) -> float:
    """max(trace) / trace[0] (nan for an empty trace, inf when any entry is not finite)."""
    if not trace:
        return float("nan")
    if not all(math.isfinite(v) for v in trace):
        return float("inf")
    return max(trace) / max(trace[0], 1e-30)


def phase_step_ms(loop: LoopState, warmup_steps: int) -> dict[str, float]:
    """A DEQ run's mean step time per phase: ``time/solve_step_ms`` over the steps that solved (every DEQ run that
    solved; its whole ``time/step_ms`` without a warm-up) and ``time/warmup_step_ms`` over its unrolled warm-up
    steps (only with a warm-up). ``time/step_ms`` is their mean weighted by the steps. {} when the warm-up's time
    is unknown (a run resumed from a checkpoint that did not record it)."""
    warm_steps = min(loop.step, warmup_steps)
    warm_s = loop.warmup_s if warm_steps else 0.0
    if warm_s is None:
        return {}
    out = {}
    if loop.step > warm_steps:
        out["time/solve_step_ms"] = 1000 * (loop.train_s - warm_s) / (loop.step - warm_steps)
    if warm_steps:
        out["time/warmup_step_ms"] = 1000 * warm_s / warm_steps
    return out


def _non_finite(loss: float, jacobian: float | None, weight: float) -> str:
    """Why the loss a step optimised, ``loss + weight * jacobian`` (the task loss alone when ``weight`` is 0 or the
    step made no Jacobian estimate), is not finite; "" when it is."""
    if not math.isfinite(loss):
        return f"non-finite loss ({loss})"
    if weight > 0 and jacobian is not None and not math.isfinite(loss + weight * jacobian):
        return (f"non-finite loss ({loss + weight * jacobian}: the task loss {loss:.6g} plus "
                f"train.jacobian_weight={weight:g} x core/jacobian_loss={jacobian})")
    return ""


READ_EVERY = 50  # training steps read from the device at least this often (see _Run._flush)


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    index: int = 0  # batches of ``epoch`` already consumed
    train_s: float = 0.0
    # the part of train_s a DEQ spent on its warm-up steps (None: unknown, resumed from a checkpoint without it)
    warmup_s: float | None = 0.0
    samples: int = 0
    window: list[dict[str, float]] = field(default_factory=list)
    core_totals: dict[str, list[float]] = field(default_factory=dict)  # key -> [sum, count] over training
    last_probe: int | None = None  # the step of a DEQ's last gradient probe (its schedule resumes with the run)


def _pooled(calls: list[dict[str, float]]) -> dict[str, float]:
    """One block's ``Block.equilibrium`` measures of several inputs as one: the residual and the converged fraction
    averaged over all their systems (nan without any), the systems summed, the first call's spectral norm (the
    only one estimated)."""
    total = sum(c["systems"] for c in calls)

    def mean(key: str) -> float:
        return sum(c[key] * c["systems"] for c in calls if c["systems"]) / total if total else math.nan

    return {"rel_residual": mean("rel_residual"), "converged_fraction": mean("converged_fraction"),
            "systems": total, "spectral_norm": calls[0]["spectral_norm"] if calls else math.nan}


def _moved(tree: Any, device: torch.device) -> Any:
    """Every tensor of a nested tuple, list or dict on ``device`` (the others as they are)."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)


class EquilibriumProbe:
    """Measures a DEQ run's equilibrium health without changing what it trains.

    ``capture()`` records the input of every call of every DEQ block while the validation split is scored (every
    batch; held in host memory); ``health()`` then solves each captured input again (eval budget) and returns
    ``eq/rel_residual`` (per block the mean over every system of the split, then the mean over blocks),
    ``eq/converged_fraction`` (per block the fraction of the split's systems; the lowest block's),
    ``eq/systems`` (how many systems a block solved over the split: the fewest) and ``eq/spectral_norm``
    (highest estimate of ||df/dz|| at z*, on each block's first validation batch).
    ``grad_cosine()`` compares, on one fixed training batch (the first of epoch 0), the gradient of the DEQ blocks'
    parameters the run's backward mode gives with a tight-tolerance one: the run's gradient is taken as its steps
    take it (under the run's ``autocast``: bf16 on CUDA for the layers around the DEQ, whose solves run in float32),
    the references in full precision, so what bf16 does to the gradient shows. RNG states and buffers are restored
    after each measurement, so a run with probes trains exactly as one without.
    """

    def __init__(self, cfg: DictConfig, paradigm: Paradigm, model: nn.Module, data: DataBundle,
                 recorder: "StatsRecorder", autocast: contextlib.AbstractContextManager | None = None):
        self.cfg, self.paradigm, self.model, self.data, self.recorder = cfg, paradigm, model, data, recorder
        self.autocast = autocast or contextlib.nullcontext()  # the run's training precision (bf16 on CUDA)
        self.options = cfg.equilibrium
        self.thresholds = thresholds(cfg)
        self.blocks = [m for m in model.modules() if isinstance(m, Block) and m.spec.mode == "deq"]
        self.inputs: dict[int, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        self.batch: Any = None
        self.last_probe: int | None = None  # the step of the last gradient probe

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        self.inputs = {}

        def hook(i: int) -> Any:
            def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                if on_the_record():  # held in host memory until ``health``: a GPU keeps none of the split
                    self.inputs.setdefault(i, []).append(_moved((args, kwargs), torch.device("cpu")))
            return keep

        handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def health(self) -> dict[str, float]:
        """Residual and converged fraction at the captured inputs (eval mode), each block's pooled over all its
        calls weighted by their systems, and the spectral norm estimated at its first call (the power iteration
        on every batch would cost more than the validation itself)."""
        found = []
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            with _restored(self.model):
                for i, calls in self.inputs.items():
                    each = []
                    for n, captured in enumerate(calls):
                        args, kwargs = _moved(captured, device)
                        kwargs = dict(kwargs)
                        z0 = args[1] if len(args) > 1 else kwargs.pop("z0", None)
                        each.append(self.blocks[i].equilibrium(
                            args[0], z0, power_iters=int(self.options.power_iters) if n == 0 else 0,
                            rel_residual=float(self.thresholds.rel_residual or 1e-2), **kwargs))
                    found.append(_pooled(each))
        finally:
            self.model.train(was_training)
            self.recorder.take()
            self.inputs = {}
        if not found:
            return {}
        return {"eq/rel_residual": sum(f["rel_residual"] for f in found) / len(found),
                "eq/converged_fraction": min(f["converged_fraction"] for f in found),
                "eq/systems": min(f["systems"] for f in found),
                "eq/spectral_norm": max(f["spectral_norm"] for f in found)}

    def grad_cosine(self, seed: int) -> dict[str, float]:
        """On the probe batch, the cosine of the run's gradient of the DEQ blocks' parameters
        (``judged_parameters``) with the same backward mode after a tight-tolerance
        solve (``eq/grad_cosine``: is the solve converged enough for its gradient? the equilibrium check) and with
        the exact implicit (IFT) gradient at that tolerance (``eq/grad_cosine_ift``: how far the backward mode is
        from the implicit gradient; phantom and one-step gradients are approximations by design, so this one is
        recorded, not judged). For an IFT run the two references coincide (the adjoint solved tightly)."""
        if self.batch is None:
            self.batch = next(iter(self.data.train_batches(epoch_generator(seed, 0))))
        o = self.options
        tight = {"max_iter": int(o.reference_max_iter), "tol": float(o.reference_tol)}

        def reference(block: Block, implicit: bool) -> tuple[SolverSpec, GradSpec]:
            solver = dataclasses.replace(block.spec.solver, eval_max_iter=None, eval_tol=None, **tight)
            grad = block.spec.grad
            if implicit or grad.mode == "ift":
                grad = GradSpec("ift", solver=grad.solver, options=grad.options, **tight)
            return solver, grad

        grads, residuals = {}, []
        for name, refs in (("run", None), ("same", lambda b: reference(b, False)),
                           ("ift", lambda b: reference(b, True))):
            if name == "ift" and all(b.spec.grad.mode == "ift" for b in self.blocks):
                continue
            grads[name], solves = self._gradient(seed, refs)
            if refs is not None:
                residuals += [r for s in solves for r in (s.rel_residual, s.adjoint_rel_residual) if not math.isnan(r)]
        out = {"eq/grad_cosine": gradient_cosine(grads["run"], grads["same"])}
        out["eq/grad_cosine_ift"] = gradient_cosine(grads["run"], grads["ift"]) if "ift" in grads \
            else out["eq/grad_cosine"]
        out["eq/reference_rel_residual"] = max(residuals) if residuals else math.nan
        return out

    def judged_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the DEQ blocks, each once: the gradient the probe compares. Their gradient
        is what the backward mode computes (the layers before a block get theirs through the same adjoint); the
        head's, often the largest, depends on the solve only through z* and would dilute a wrong block gradient
        (a quick vision DEQ: 1 - cosine 1.1e-4 over all parameters, 5.0e-4 over the block's)."""
        return list({id(p): p for b in self.blocks for p in b.parameters() if p.requires_grad}.values())

    def _gradient(self, seed: int, reference: Any) -> tuple[tuple[torch.Tensor | None, ...], list[BlockStats]]:
        """The task loss's gradient on the probe batch over ``judged_parameters()``, with every DEQ block solved
        and differentiated as ``reference(block)`` says (None: as the run does, in its precision), and the DEQ
        blocks' statistics of that step (their forward and adjoint residuals); RNG and buffers restored after."""
        params = self.judged_parameters()
        with _restored(self.model), torch.random.fork_rng(devices=_cuda_devices(self.model)):
            torch.manual_seed(seed)
            with contextlib.ExitStack() as stack:
                if reference is not None:
                    for b in self.blocks:
                        stack.enter_context(b.solved_with(*reference(b)))
                self.model.train()
                with self.autocast if reference is None else contextlib.nullcontext():
                    loss = self.paradigm.training_step(self.model, self.batch).loss
                grads = torch.autograd.grad(loss, params, allow_unused=True) if params else ()
        return grads, [s.resolve() for s in self.recorder.take() if s.mode == "deq"]

    def grad_due(self, step: int, final: bool) -> bool:
        """Whether an evaluation at ``step`` also probes the gradient: always at the end (unless probes are off),
        else when ``probe_every`` steps have passed since the last probe or the start (null: at every evaluation)."""
        every = self.options.probe_every
        if every == 0:
            return False
        return final or every is None or step - (self.last_probe or 0) >= every

    def verdict(self, record: dict[str, Any]) -> dict[str, Any]:
        """metrics.json's ``equilibrium``: the measured values of ``record``, the flags, the thresholds and the
        settings the judged values were measured with (``config.measurement_values``)."""
        measured = {k.split("/", 1)[1]: record[k] for k in ("eq/rel_residual", "eq/converged_fraction",
                                                             "eq/systems", "eq/spectral_norm", "eq/grad_cosine",
                                                             "eq/grad_cosine_ift", "eq/reference_rel_residual")
                    if k in record}
        flags = equilibrium_flags(measured, self.thresholds)
        return {"at_equilibrium": not flags, "flags": flags, "measured": measured,
                "thresholds": dataclasses.asdict(self.thresholds),
                "measured_with": measurement_values(OmegaConf.to_container(self.options, resolve=True))}


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (norm statistics, power-iteration vectors) and every module's extra
    state (modules kept outside the tree, such as a BYOL target that a training step moves) on exit."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    extra = {k: copy.deepcopy(v) for k, v in model.state_dict().items() if k.endswith("_extra_state")}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
        if extra:
            model.load_state_dict(extra, strict=False)


def warn_other_code(sessions: list[Any], run_dir: Path) -> None:
    """Warn when a checkpoint is resumed (``sessions``: the run's provenance entries, this process's last) under
    another commit, or from or into a dirty tree, than its previous session trained with: its steps then come from
    two code versions (metrics.json keeps each session's; the report's header counts runs per commit)."""
    before = [p for p in sessions[:-1] if isinstance(p, dict) and p.get("commit")]
    if not before:
        return
    last, now_ = before[-1], sessions[-1]
    if (last.get("commit"), last.get("dirty")) != (now_["commit"], now_["dirty"]) or now_["dirty"]:
        print(f"[tiedlab] warning: resuming {run_dir}, last trained at commit {last.get('commit')}"
              f"{'+dirty' if last.get('dirty') else ''}, under {now_['commit']}{'+dirty' if now_['dirty'] else ''}: "
              "its steps will come from two code versions", file=sys.stderr)


def check_precision(cfg: DictConfig, checkpoint: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume a checkpoint on a device that changes its precision (train.device is bookkeeping, not part
    of the fingerprint, but with train.amp it decides between bf16 autocast on CUDA and fp32). Checkpoints record
    the precision their steps computed in; older ones, which do not, are not checked.

    Raises:
        rundir.RunDirError: the checkpoint was trained in another precision, naming both and what to do.
    """
    before = checkpoint.get("precision")
    device = select_device(cfg.train.device)
    now = rundir.precision(device, bool(cfg.train.amp))
    if before is not None and before != now:
        raise rundir.RunDirError(
            f"{run_dir}'s checkpoint was trained in {before} and would resume in {now} on {device} "
            f"(train.amp={cfg.train.amp}): resume it on the kind of device it started on (train.device), or use "
            "another run directory")


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """The training steps' precision: bf16 autocast on CUDA when ``train.amp``, else full precision
    (``rundir.precision`` names it)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and amp else contextlib.nullcontext()


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def device_wait(device: torch.device) -> float:
    """Wait for the work queued on ``device`` (CUDA: ``torch.cuda.synchronize``); the seconds waited, 0.0 where
    nothing is queued (CPU runs each operation as it is called)."""
    if device.type != "cuda":
        return 0.0
    t0 = time.perf_counter()
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def fetch_waits(device: torch.device) -> bool:
    """Whether fetching a batch waits for the device's queued work (CUDA: the copy of host-drawn values to the
    device does), so that a step's clock starts at its fetch, not after it."""
    return device.type == "cuda"


def _batches(data: DataBundle, seed: int, epoch: int, skip: int) -> Iterator[tuple[int, int, Any]]:
    """(epoch, index, batch) from ``epoch`` on, skipping the first ``skip`` batches of that epoch.

    Epoch e draws all its randomness from a generator seeded by (seed, e), so a resumed run sees
    exactly the batches an uninterrupted one would have.
    """
    while True:
        for i, batch in enumerate(data.train_batches(epoch_generator(seed, epoch))):
            if i >= skip:
                yield epoch, i, batch
        epoch, skip = epoch + 1, 0


def _progress(cfg: Any, total: int, start: int):
    show = cfg.train.progress
    if show is None:
        show = sys.stderr.isatty() and not os.environ.get("CI")
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=False)


def _evaluate(paradigm: Paradigm, model: nn.Module, data: DataBundle, split: str, recorder: StatsRecorder) -> dict[str, float]:
    """The adapter's scores on ``split`` (``Paradigm.evaluate`` runs them in eval mode under no_grad and restores
    the mode) plus the block statistics of that pass."""
    recorder.take()
    out = paradigm.evaluate(model, data, split)
    out.update(summarize(recorder.take(), prefix=f"core/{split}_"))
    return {k: float(v) for k, v in out.items()}


def train(cfg: Any, run_dir: str | Path, overrides: Sequence[str] = (),
          terminal_stops: bool = False, record: Mapping[str, str] | None = None,
          log: rundir.RunLog | None = None) -> dict[str, Any]:
    """Run (or resume) one training run in ``run_dir``; returns what it wrote to metrics.json, plus
    ``stopped_by`` (the signal's name) when a stop signal (SIGTERM, SIGUSR2; with ``terminal_stops``, Ctrl-C and a
    hang-up too: the command line's runs) ended the run (``interrupted``) or came after its training loop (during the
    final evaluation: the run still completed); the caller should start nothing further either way. Without
    ``terminal_stops`` Ctrl-C raises KeyboardInterrupt as usual (a test session, a notebook's loop over runs).

    The process holds the run directory's lock throughout. A finished run of the same config returns at once
    (nothing is loaded or rewritten). ``overrides`` (the command line's) only sharpen the warnings about
    ignored options. ``record`` maps paths relative to ``run_dir`` to the text the command leaves there (the
    command line's Hydra record, ``.hydra/*.yaml``): written once the run directory is this process's (locked,
    of this config, unfinished), so that a refused command rewrites nothing of another's run. ``log`` (the
    command's cli.log) is opened then too; the caller closes it.

    Raises:
        ValueError: bad config values, unknown names, missing or corrupt data (before training starts).
        rundir.RunDirError: the run directory holds another config's run or an unusable checkpoint, or another
            process is using it (``RunLockedError``).
    """
    if run_dir is None or not str(run_dir).strip():
        raise ValueError(f"run_dir={run_dir!r}: give a directory, or leave run_dir out for the one the overrides name")
    cfg = as_config(cfg)
    spec = check_values(cfg)  # a bad paradigm option too: refused before the run directory is touched
    world = distributed.world_from_env()  # one process of one unless started by torchrun
    distributed.check_supported(world, cfg.paradigm, int(cfg.train.batch_size))
    unread = get_paradigm(cfg.paradigm).unread_options(OmegaConf.to_container(cfg.data, resolve=True),
                                                       OmegaConf.to_container(cfg.model, resolve=True))
    for message in ignored_options(cfg, overrides, unread) if world.is_main else ():
        print(f"[tiedlab] warning: {message}", file=sys.stderr)
    run_dir = Path(run_dir)
    world.join(select_device(cfg.train.device))
    with contextlib.ExitStack() as stack:
        def hold() -> None:  # rank 0 alone creates and writes the run directory
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(rundir.hold_lock(run_dir))

        world.main_first(hold, then_others=False)
        return _train_locked(cfg, spec, run_dir, list(overrides), world, terminal_stops, record, log)


def _train_locked(cfg: DictConfig, spec: BlockSpec, run_dir: Path, overrides: list[str],
                  world: distributed.World | None = None, terminal_stops: bool = False,
                  record: Mapping[str, str] | None = None, log: rundir.RunLog | None = None) -> dict[str, Any]:
    """Check the run directory, then build, train, evaluate and record the run (the lock is held by rank 0;
    the other ranks read the run directory after rank 0 checked it, before it writes)."""
    world = world or distributed.World(device=select_device(cfg.train.device))

    def own() -> None:  # the command's log and record, once the directory is this run's (rank 0 writes)
        if not world.is_main:
            return
        if log is not None:
            log.open(run_dir)
        for name, text in (record or {}).items():
            folder = (run_dir / name).parent
            if folder.is_symlink():  # never written through (a planted link to another place)
                raise rundir.RunDirError(f"{folder} is a symbolic link: remove it (the run writes its own)")
            folder.mkdir(parents=True, exist_ok=True)
            rundir.write_text(run_dir / name, text)

    def open_run_dir() -> _Opened:
        return _open_run_dir(cfg, run_dir, own)

    opened = world.main_first(open_run_dir)
    if opened.finished:
        return opened.previous
    stop = _StopSignals(terminal_stops)  # from the build to the last write: a stop waits for a step boundary
    try:
        run = _Run(cfg, spec, run_dir, opened, overrides, world)
        status, reason = run.train(stop)
        result = run.finish(status, reason)
    except BaseException as err:
        stop.deliver(err)  # a build error must not swallow a stop that waited
        raise
    stop.restore()
    if stop.received:  # the signal that ended the run, or that came after its loop (the run ended anyway)
        result = {**result, "stopped_by": stop.received}
    return result


class _Pending(NamedTuple):
    """One training step's records not yet read from the device (``_Run._flush`` reads them)."""

    loss: torch.Tensor  # the task loss
    jacobian: torch.Tensor | None  # the Hutchinson estimate of the Jacobian penalty, if the block made one
    metrics: dict[str, Any]
    stats: list[BlockStats]
    warm: bool  # a DEQ warm-up step (unrolled, not solved)
    seconds: float  # its share of the training clock


@dataclass
class _Opened:
    """What the run directory holds before training: the previous metrics.json, the config's fingerprint,
    and the checkpoint's contents (None: start fresh)."""

    previous: dict[str, Any]
    plain: dict[str, Any]
    fingerprint: str
    state_dict: dict[str, Any] | None
    finished: bool


def _open_run_dir(cfg: DictConfig, run_dir: Path, on_own: Callable[[], None] | None = None) -> _Opened:
    """Refuse a run directory of another config (or a used one under resume=false); say whether its run
    already finished; load its checkpoint. ``on_own`` is called once the directory is known to be this run's and
    unfinished, before its checkpoint is read (the command's record and log: a bad checkpoint is logged there).

    Raises:
        rundir.RunDirError: as above; rundir.CheckpointError: resume=true without a checkpoint, or a bad one.
    """
    resume = str(cfg.resume).lower()
    if resume == "false" and ((run_dir / rundir.CHECKPOINT).exists() or (run_dir / rundir.METRICS).exists()):
        raise rundir.OtherRunError(
            f"resume=false but {run_dir} already holds a run; use another run directory or delete it")
    previous = rundir.read_metrics(run_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    fp = rundir.fingerprint(plain)
    if previous and not rundir.same_config(plain, previous):
        raise rundir.OtherRunError(
            f"{run_dir} holds a {previous.get('status', '?')} run of another config (fingerprint "
            f"{previous.get('fingerprint')} != {fp}); use another run directory, or delete it to start over")
    if _finished(cfg, previous):
        print(f"[tiedlab] {run_dir} already holds a finished run ({previous['status']}); nothing to do", file=sys.stderr)
        return _Opened(previous, plain, fp, None, finished=True)
    if on_own is not None:
        on_own()
    # the checkpoint was written with the fingerprint of the version its metrics.json records (checked just above);
    # it is rewritten under the current one before metrics.json is (a crash in between would leave them disagreeing)
    state_dict = rundir.load_checkpoint(
        run_dir, rundir.fingerprint(plain, previous.get("fingerprint_version", 1)) if previous else fp)
    if state_dict is not None and state_dict["fingerprint"] != fp:
        state_dict["fingerprint"] = fp
        rundir.save_checkpoint(run_dir, state_dict)
    if state_dict is not None:
        check_precision(cfg, state_dict, run_dir)
    if resume == "true" and state_dict is None:
        raise rundir.CheckpointError(f"resume=true but {run_dir / rundir.CHECKPOINT} does not exist")
    return _Opened(previous, plain, fp, state_dict, finished=False)


def to_channels_last(model: nn.Module, paradigm: str) -> nn.Module:
    """``model`` with its 4-d weights (convolutions, their masks) in channels-last layout; a convolution whose weight
    is channels-last computes and returns channels-last activations, so the inputs need no conversion.

    Raises:
        ValueError: the model has no 4-d weight (``train.channels_last`` would change nothing).
    """
    if not any(p.dim() == 4 for p in (*model.parameters(), *model.buffers())):
        raise ValueError(f"train.channels_last=true: the {paradigm} model has no convolution weight to lay out "
                         "channels-last; set train.channels_last=false")
    return model.to(memory_format=torch.channels_last)


class _Run:
    """One run's objects and its loop, in the order a reader follows them: ``__init__`` builds (data, model,
    optimiser, schedule) and restores a checkpoint; ``train`` loops over ``_step``, ``_log``, ``_evaluate_due``
    and ``_checkpoint``; ``finish`` evaluates at the end and writes metrics.json."""

    def __init__(self, cfg: DictConfig, spec: BlockSpec, run_dir: Path, opened: _Opened, overrides: list[str],
                 world: distributed.World | None = None, seed_batch: int = 1):
        self.cfg, self.spec, self.run_dir, self.fp = cfg, spec, run_dir, opened.fingerprint
        self.world = world = world or distributed.World(device=select_device(cfg.train.device))
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        self.device = device = world.device
        self.sessions = [*(opened.previous.get("provenance") or []),
                         run_provenance(str(device), torch.get_num_threads(), overrides, world.size,
                                        seed_batch)]
        if opened.state_dict is not None and world.is_main:
            warn_other_code(self.sessions, run_dir)
        reset_peak_memory(device)
        seed_everything(int(cfg.seed))
        self.paradigm = _make_paradigm(cfg, device)
        if cfg.train.score_train and not getattr(self.paradigm, "scores_train", False):
            raise ValueError(f"train.score_train=true: the {cfg.paradigm} adapter cannot score its training split "
                             f"(Paradigm.scores_train); set train.score_train=false")
        self.data = self.paradigm.build_data()
        self.model = self.paradigm.build_model(self.data, spec).to(device)
        if cfg.train.channels_last:
            self.model = to_channels_last(self.model, cfg.paradigm)
        self.total_steps = int(cfg.train.max_steps or math.ceil(float(cfg.train.epochs) * self.data.steps_per_epoch))
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.schedule = cosine_with_warmup(self.optimizer, int(cfg.optim.warmup_steps), self.total_steps,
                                           float(cfg.optim.min_lr_ratio))
        if world.is_main:
            rundir.write_text(run_dir / rundir.CONFIG, OmegaConf.to_yaml(cfg))
            self.paradigm.artifacts(str(run_dir))
        self.counts = model_param_counts(self.model)
        self.loop = LoopState()
        self._restore(opened.state_dict)
        world.broadcast_module(self.model)  # built from the same seed on every rank: make sure
        self.signal_seen = ""  # a stop signal any rank received, as the ranks agreed after the last step

        self.base = {"fingerprint": self.fp, "fingerprint_version": rundir.FINGERPRINT_VERSION,
                     "paradigm": cfg.paradigm, "paradigm_name": self.paradigm.name,
                     "dataset": self.data.meta.get("dataset"),
                     "primary_metric": {"name": self.paradigm.primary_metric,
                                        "higher_is_better": self.paradigm.higher_is_better},
                     "total_steps": self.total_steps, "data": self.data.meta, "provenance": self.sessions,
                     "width": _width(cfg, self.paradigm)}
        self.tracker = make_tracker(cfg.logger, run_dir, opened.plain, fresh=opened.state_dict is None) \
            if world.is_main else LocalTracker()
        if world.is_main:
            rundir.write_json(run_dir / rundir.METRICS, {**self.base, "status": "running", "reason": "",
                                                         "step": self.loop.step, "metrics": dict(self.counts)})
        self.step_fn = torch.compile(self.model) if cfg.train.compile else self.model
        self.autocast = _autocast(device, bool(cfg.train.amp))
        self.recorder = StatsRecorder(self.model)
        self.progress = None
        self.log_every = cfg.train.log_every if cfg.train.log_every is not None else max(1, self.total_steps // 10)
        # Steps whose task loss, Jacobian estimate (None: none), metrics and block statistics are still on the device,
        # read together by ``_flush``, each with whether it was a warm-up step (unrolled, not solved).
        self.pending: list[_Pending] = []
        self.last_val: dict[str, Any] = {}  # the latest in-loop validation record of this process
        self.probe = EquilibriumProbe(cfg, self.paradigm, self.model, self.data, self.recorder,
                                      self.autocast) if spec.mode == "deq" else None
        if self.probe is not None:
            self.probe.last_probe = self.loop.last_probe  # a resumed run probes at the steps it would have
        self.warmup_steps = int(cfg.train.deq_warmup_steps) if spec.mode == "deq" else 0
        self.warmup_depth = int(cfg.train.deq_warmup_depth or spec.depth)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"train.deq_warmup_steps={self.warmup_steps} must be below the run's {self.total_steps} "
                             "steps: the DEQ would never be solved")
        if int(cfg.optim.warmup_steps) >= self.total_steps and self.world.is_main:  # short runs: smoke tests, timings
            print(f"[tiedlab] warning: optim.warmup_steps={cfg.optim.warmup_steps} is not below the run's "
                  f"{self.total_steps} steps: the learning rate rises all run and never decays (optim.min_lr_ratio "
                  "is not reached)", file=sys.stderr)

    @property
    def warming_up(self) -> bool:
        """Whether the next step (and an evaluation now) unrolls the DEQ's map instead of solving it."""
        return self.loop.step < self.warmup_steps

    def _set_warmup(self) -> None:
        """The DEQ blocks unroll ``warmup_depth`` layers while warming up (a function of the step, so a resumed run
        switches at the same step as an uninterrupted one), and solve for the fixed point after."""
        if self.warmup_steps:
            for block in self.probe.blocks:
                block.warmup_depth = self.warmup_depth if self.warming_up else 0

    def _restore(self, state_dict: dict[str, Any] | None) -> None:
        """Continue from a checkpoint (weights, optimiser, schedule, loop counters, RNG; history cut back to its
        step), or start fresh (an old history.jsonl without a checkpoint is removed)."""
        world = self.world
        if state_dict is None:
            if world.is_main and (self.run_dir / rundir.HISTORY).exists():
                (self.run_dir / rundir.HISTORY).unlink()
            if world.rank:  # the model is built; from here on each rank draws its own random numbers
                torch.manual_seed(distributed.rank_seed(int(self.cfg.seed), world.rank))
            return
        self.model.load_state_dict(state_dict["model"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.schedule.load_state_dict(state_dict["schedule"])
        loop = dict(state_dict["loop"])
        loop.setdefault("warmup_s", None if loop.get("step") else 0.0)  # an older checkpoint: warm-up time unknown
        self.loop = LoopState(**loop)
        ranks = state_dict.get("rng_ranks") or [state_dict["rng"]]  # every rank's, from a data-parallel run
        if world.rank < len(ranks):
            rundir.set_rng_state(ranks[world.rank], self._cuda)
        else:  # resumed over more processes than it was checkpointed from: a new stream for this rank
            torch.manual_seed(distributed.rank_seed(int(self.cfg.seed), world.rank) + self.loop.step)
        if world.is_main:
            rundir.truncate_history(self.run_dir, self.loop.step)
        where = f" (rank {world.rank} of {world.size})" if world.parallel else ""
        print(f"[tiedlab] resuming {self.run_dir} at step {self.loop.step}/{self.total_steps}{where}", file=sys.stderr)

    @property
    def _cuda(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    def _checkpoint(self) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG state when there are several (all ranks call it)."""
        rng = self.world.gather_rng(rundir.rng_state(self._cuda))
        if not self.world.is_main:
            return
        rundir.save_checkpoint(self.run_dir, {
            "fingerprint": self.fp, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "loop": vars(self.loop).copy(), "rng": rng[0],
            "precision": rundir.precision(self.device, bool(self.cfg.train.amp)),  # what its steps computed in
            **({"rng_ranks": rng} if self.world.parallel else {}),
        })

    def train(self, stop: "_StopSignals | None" = None) -> tuple[str, str]:
        """Train to ``total_steps`` (or the time limit); returns (status, reason). A crash is a failed run; a
        SIGUSR2 or SIGTERM (a scheduler's warning before a timeout, a preemption) checkpoints at the next step
        boundary and ends the run as ``interrupted`` (resumable). ``stop``: the caller's installed handlers (they
        stay installed after the loop); None: installed for the loop alone."""
        cfg, loop = self.cfg, self.loop
        self.progress = _progress(cfg, self.total_steps, loop.step) if self.world.is_main else None
        batches = self.batches()
        self.model.train()
        own = stop is None
        stop = _StopSignals() if stop is None else stop
        try:
            while loop.step < self.total_steps:
                ended = self._signalled(stop)
                if ended:
                    return ended
                fetched = time.perf_counter()
                epoch, index, batch = next(batches)
                self._set_warmup()
                ended = self._after_step(self._step(batch, stop, fetched if fetch_waits(self.device) else None),
                                         epoch, index, stop)
                if ended:
                    return ended
        except Exception as err:  # noqa: BLE001 - any crash in the loop (a full disk too) is a failed run, with why
            return "failed", self.crash_reason(err)
        finally:
            if own:
                stop.restore()
            if self.progress is not None:
                self.progress.close()
        return "completed", ""

    def batches(self) -> Iterator[tuple[int, int, Any]]:
        """(epoch, index, batch) from where the run stands (``_batches``)."""
        return _batches(self.data, int(self.cfg.seed), self.loop.epoch, self.loop.index)

    def crash_reason(self, err: Exception) -> str:
        return f"{type(err).__name__} at step {self.loop.step}: {err}{_keep_traceback(self.run_dir)}"

    def _signalled(self, stop: "_StopSignals") -> tuple[str, str] | None:
        """After SIGUSR2/SIGTERM (any rank's): read what is pending, checkpoint, and end as ``interrupted``."""
        received = self.signal_seen if self.world.parallel else stop.received
        if not received:
            return None
        stopped = self._flush()
        if stopped:
            return "diverged", stopped
        self._checkpoint()
        return "interrupted", (f"{received} at step {self.loop.step}/{self.total_steps}: checkpointed; "
                               "rerun the same command to resume")

    def _after_step(self, stopped: str, epoch: int, index: int, stop: "_StopSignals") -> tuple[str, str] | None:
        """What follows a step on batch ``index`` of ``epoch``: read the pending steps when due, evaluate, stop at
        the time limit, checkpoint. Returns (status, reason) when the run ends here, None to go on."""
        cfg, loop = self.cfg, self.loop
        time_up = self.time_up()
        if not stopped and (time_up or stop.received or self._read_due()):
            stopped = self._flush(stop)
        if stopped:
            return "diverged", stopped
        loop.epoch, loop.index = epoch, index + 1
        self._evaluate_due(time_up)
        if time_up:
            return "completed", (f"time limit train.time_limit_s={cfg.train.time_limit_s} reached at step "
                                 f"{loop.step}/{self.total_steps}")
        if loop.step % cfg.train.ckpt_every == 0 and loop.step < self.total_steps:
            self._checkpoint()
        return None

    def _step(self, batch: Any, stop: "_StopSignals | None" = None, started: float | None = None) -> str:
        """One optimiser step on ``batch`` (this rank's share of it), timed from ``started`` (None: now). Its loss,
        metrics and block statistics stay on the device in ``pending`` until ``_flush`` reads them (at the next
        log, evaluation or checkpoint, or every ``READ_EVERY`` steps), so that a step does not wait for the host; a
        step whose values decide at once (a solving DEQ: the residual check; data-parallel ranks: the agreed loss and
        stop signal; a progress bar) is read at once. Returns why the run diverged ("" while it has not, or not yet
        read). On CUDA the loop times a step from its batch fetch: copying the batch's host-drawn values to the
        device waits for the steps queued before it, so a clock started after the fetch would leave the device's
        time out (on CPU the fetch is batch building, left out of ``time/train_s``)."""
        cfg, loop, world = self.cfg, self.loop, self.world
        t0 = time.perf_counter() if started is None else started
        with self.autocast:
            out = self.paradigm.training_step(self.step_fn, world.shard(batch))
        jacobian = out.stats.jacobian_loss if out.stats is not None else None  # the Hutchinson estimate, if asked
        jac_weight = float(cfg.train.jacobian_weight)
        penalised = jac_weight > 0 and jacobian is not None
        loss = out.loss + jac_weight * jacobian if penalised else out.loss  # what the step optimises
        recorded = out.loss.detach()  # train/loss: the task loss alone, comparable across block modes
        if world.parallel:
            loss_value = world.mean(loss)  # the global batch's loss: every rank decides alike, before stepping
            if not math.isfinite(loss_value):
                return f"non-finite loss ({loss_value}) at step {loop.step + 1}"
            recorded = torch.tensor(world.mean(out.loss) if penalised else loss_value, dtype=torch.float64)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world.average_gradients(self.model)  # the global batch's gradient (slices of equal size)
        return self.update(time.perf_counter() - t0, recorded, out.metrics, self.recorder.take(), stop,
                           jacobian=jacobian.detach() if jacobian is not None else None)

    def update(self, seconds: float, loss: torch.Tensor, metrics: dict[str, Any], stats: list[BlockStats],
               stop: "_StopSignals | None" = None, jacobian: torch.Tensor | None = None) -> str:
        """The optimiser step on the gradients in ``.grad`` (clipped), the schedule, the clock (``seconds`` of
        forward and backward plus the update's own) and the step's records into ``pending`` (read at once where a
        decision needs them: see ``_step``). ``loss`` is the task loss; ``jacobian`` the step's Hutchinson estimate
        of the Jacobian penalty (None when the block made none), which the step optimised as
        ``loss + train.jacobian_weight * jacobian``. Returns why the run diverged ("" while it has not)."""
        cfg, loop, world = self.cfg, self.loop, self.world
        t0 = time.perf_counter()
        warm = self.warming_up  # this step unrolled the DEQ's map (read before the step count moves on)
        if cfg.optim.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(cfg.optim.clip))
        self.optimizer.step()
        self.schedule.step()
        seconds += time.perf_counter() - t0  # on a GPU: launch time; _flush adds the device's wait
        loop.train_s += seconds
        if warm and loop.warmup_s is not None:
            loop.warmup_s += seconds
        loop.step += 1
        loop.samples += self.data.samples_per_step
        self.pending.append(_Pending(loss, jacobian, metrics, stats, warm, seconds))
        solving = self.spec.mode == "deq" and not self.warming_up  # the next step solves (the last warm-up step's
        if solving or world.parallel or self.progress is not None:  # read too: pending never mixes the two phases)
            return self._flush(stop)
        return ""

    def add_wait(self, waited: float) -> None:
        """Count ``waited`` seconds spent waiting for the device's queued steps as training time (and as warm-up
        time when the pending steps are warm-up steps: ``pending`` never mixes the two phases)."""
        self.loop.train_s += waited
        if waited and self.pending and self.pending[0].warm and self.loop.warmup_s is not None:
            self.loop.warmup_s += waited

    def time_up(self) -> bool:
        """Whether the run has used its ``train.time_limit_s`` of training time."""
        limit = self.cfg.train.time_limit_s
        return limit is not None and self.loop.train_s >= float(limit)

    def _read_due(self) -> bool:
        """Whether the steps in ``pending`` are read now (``reads_after``)."""
        return bool(self.pending) and self.reads_after(self.loop.step)

    def reads_after(self, step: int) -> bool:
        """Whether the loop reads its pending steps after ``step`` by the step count: at a log line, an evaluation,
        a checkpoint, the last step, and at least every ``READ_EVERY`` steps (a diverged run is noticed within that
        many). A stop signal and the time limit read too (``_after_step``)."""
        train = self.cfg.train
        return (step == self.total_steps or step % READ_EVERY == 0 or step % train.eval_every == 0
                or step % train.ckpt_every == 0 or bool(self.log_every and step % self.log_every == 0))

    def _flush(self, stop: "_StopSignals | None" = None) -> str:
        """Read the pending steps in one transfer (after waiting for the device, which counts as training time):
        each step's task loss (``train/loss``), block statistics and Jacobian estimate (``core/jacobian_loss``;
        means over the ranks) go to the loop's window and totals; returns why the run diverged at the first step
        that did ("" when none did): a non-finite loss as optimised (the penalty included) or an exploding solve."""
        cfg, loop, world = self.cfg, self.loop, self.world
        if not self.pending:
            return ""
        self.add_wait(device_wait(self.device))
        pending, self.pending = self.pending, []
        # each step's task loss and Jacobian estimate (the loss again in its place when there is none)
        values = [v for p in pending for v in (p.loss, p.loss if p.jacobian is None else p.jacobian)]
        read = torch.stack([v.detach().to("cpu", torch.float64).reshape(()) for v in values]).tolist()
        losses, estimates = read[0::2], read[1::2]
        first = loop.step - len(pending) + 1
        weight = float(cfg.train.jacobian_weight)
        for i, ((_, jacobian, metrics, calls, warm, _), loss_value) in enumerate(zip(pending, losses)):
            step = first + i
            solving = self.spec.mode == "deq" and not warm
            jac_value = None if jacobian is None else estimates[i]
            why = _non_finite(loss_value, jac_value, weight)
            if why:
                loop.step = step - 1  # the run's last finite step (the ones after it are not counted, nor their time)
                uncounted = pending[i:]
                loop.train_s -= sum(p.seconds for p in uncounted)
                if loop.warmup_s is not None:
                    loop.warmup_s -= sum(p.seconds for p in uncounted if p.warm)
                loop.samples -= len(uncounted) * self.data.samples_per_step
                return f"{why} at step {step}"
            block_stats = summarize(calls)
            if jac_value is not None:
                block_stats["core/jacobian_loss"] = jac_value
            metrics = {k: float(v) for k, v in metrics.items()}
            if world.parallel:  # means over the ranks, any rank's stop signal, rank 0's clock (its time limit)
                agreed, self.signal_seen, loop.train_s = world.agree(
                    {**{f"m:{k}": v for k, v in metrics.items()}, **block_stats},
                    stop.received if stop is not None else "", loop.train_s)
                block_stats = {k: v for k, v in agreed.items() if not k.startswith("m:")}
                metrics = {k[2:]: v for k, v in agreed.items() if k.startswith("m:")}
            for key, value in block_stats.items():  # the run's totals: a DEQ's are its solves' (no warm-up step)
                if not math.isnan(value) and not (warm and self.spec.mode == "deq"):
                    total = loop.core_totals.setdefault(key, [0.0, 0])
                    total[0] += value
                    total[1] += 1
            loop.window.append({"loss": loss_value, **metrics, **block_stats})
            growth = block_stats.get("core/residual_growth", 1.0)
            if solving and (not math.isfinite(growth) or growth > cfg.train.diverge_residual):
                loop.step = step
                return (f"solver residual exploded at step {step}: it grew {growth:.3g}x "
                        f"during the solve (> train.diverge_residual={cfg.train.diverge_residual:g})")
        self._log(losses[-1], len(pending))
        return ""

    def _log(self, loss_value: float, steps: int = 1) -> None:
        """The progress bar (``steps`` more done), or a log line every ``log_every`` steps."""
        loop, progress = self.loop, self.progress
        if not self.world.is_main:
            return
        speed = loop.samples / max(loop.train_s, 1e-9)
        if progress is not None:
            progress.update(steps)
            progress.set_postfix(loss=f"{loss_value:.4f}", sps=f"{speed:.0f}")
        elif self.log_every and loop.step % self.log_every == 0:
            eta = loop.train_s / loop.step * (self.total_steps - loop.step) if loop.step else 0.0
            _say(progress, f"[tiedlab] step {loop.step}/{self.total_steps}: loss {loss_value:.4g}, "
                           f"{speed:.0f} samples/s, training ETA {eta:.0f} s")

    def _evaluate_due(self, time_up: bool) -> None:
        """Every ``eval_every`` steps, at the last step and when time is up: the training window's means into
        history.jsonl and the tracker, with validation from ``validate_from`` of the steps on (and always at the
        end), so a costly evaluation can run only where the report reads it (the last 20% and the end)."""
        loop, train = self.loop, self.cfg.train
        final = loop.step == self.total_steps or time_up
        due = loop.step % train.eval_every == 0 or final
        if due and not self.world.is_main:  # rank 0 evaluates alone; the others wait at the next step
            loop.window = []
        elif due:
            validate = final or loop.step >= train.validate_from * self.total_steps
            record = self._eval_record(("val",) if validate else (), final=final)
            if validate:
                self.last_val = record
            rundir.append_history(self.run_dir, record)
            self.tracker.log(record, loop.step)
            loop.window = []

    def _eval_record(self, splits: tuple[str, ...], final: bool) -> dict[str, Any]:
        """Evaluation on ``splits`` (see ``_eval_record``); a solving DEQ's validation also records its
        equilibrium health, and the gradient probe when due. The random-number streams are restored after, so when
        and how often a run evaluates never changes what it trains (a data loader's iterator and a Hutchinson
        Jacobian estimate draw from the global generator)."""
        self._set_warmup()
        probe = self.probe if self.probe is not None and not self.warming_up else None
        with torch.random.fork_rng(devices=_cuda_devices(self.model)):
            record = _eval_record(self.paradigm, self.model, self.data, self.loop, self.recorder, splits,
                                  self.progress, during=lambda split: probe.capture() if probe is not None
                                  and split == "val" else contextlib.nullcontext())
            if probe is not None and "val" in splits:
                record.update(probe.health())
                if probe.grad_due(self.loop.step, final):
                    record.update(probe.grad_cosine(int(self.cfg.seed)))
                    probe.last_probe = self.loop.last_probe = self.loop.step
        return record

    def _final(self, final: dict[str, Any], status: str) -> None:
        """The final evaluation and statistics into ``final``, and the last checkpoint of a completed run."""
        loop = self.loop
        if status == "completed" and self.world.is_main:
            if self.last_val.get("step") == loop.step:
                # the weights are those the last in-loop validation scored: reuse it, evaluate only test
                record = {k: v for k, v in self.last_val.items() if k.startswith(("val/", "core/val_", "eq/"))}
                record.update(self._eval_record(("test",), final=True))
            else:
                record = self._eval_record(("val", "test"), final=True)
            final.update({k: v for k, v in record.items() if k not in ("step", "epoch", "time/train_s")})
            if self.cfg.train.score_train:
                final.update(self._fit_scores())
        # Training-time block statistics, averaged over every step (NFE, residuals of the train-mode solve; a
        # DEQ's over the steps that solved, its warm-up's unrolled steps left out).
        final.update({key: total[0] / total[1] for key, total in loop.core_totals.items() if total[1]})
        final.update({
            "time/train_s": loop.train_s,
            "time/step_ms": 1000 * loop.train_s / max(loop.step, 1),  # every step's, a DEQ's warm-up included
            "throughput/samples_per_s": loop.samples / max(loop.train_s, 1e-9),
            "memory/peak_mb": peak_memory_mb(self.device),
            "train/steps": loop.step,
        })
        if self.spec.mode == "deq":
            final.update(phase_step_ms(loop, self.warmup_steps))
        if status == "completed":
            self._checkpoint()

    def _fit_scores(self) -> dict[str, float]:
        """The final weights scored on the training split in eval mode, as ``fit/<metric>`` (``train/...`` keys
        are the training steps' running means, under augmentation and changing weights)."""
        _say(self.progress, f"[tiedlab] step {self.loop.step}: evaluating the training split ...")
        scores = _evaluate(self.paradigm, self.model, self.data, "train", self.recorder)
        return {("fit/" + k[len("train/"):] if k.startswith("train/") else k.replace("core/train_", "core/fit_")): v
                for k, v in scores.items()}

    def finish(self, status: str, reason: str) -> dict[str, Any]:
        """The final evaluation, metrics.json and the tracker's summary; returns what metrics.json holds."""
        final: dict[str, Any] = dict(self.counts)
        if status == "completed":  # the last update is read by no later step's loss: a NaN there would be scored
            bad = next((n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
            if bad is not None:
                status, reason = "diverged", f"non-finite weights ({bad}) after the update of step {self.loop.step}"
        try:
            self._final(final, status)
        except Exception as err:  # noqa: BLE001 - a crash in the final evaluation or a failed write fails the run
            status, reason = "failed", f"{type(err).__name__} in the final evaluation: {err}{_keep_traceback(self.run_dir)}"
        self.sessions[-1]["ended"] = now()
        result = {**self.base, "status": status, "reason": reason, "step": self.loop.step, "metrics": final}
        if not self.world.is_main:  # rank 0 alone evaluates and writes
            self.recorder.close()
            return result
        if self.probe is not None and status == "completed":
            result["equilibrium"] = self.probe.verdict(final)
            if result["equilibrium"]["flags"]:
                print(f"[tiedlab] warning: {self.run_dir} is not at equilibrium: "
                      f"{'; '.join(result['equilibrium']['flags'])}", file=sys.stderr)
        try:
            rundir.write_json(self.run_dir / rundir.METRICS, result)
        except OSError:
            # The atomic write needs room for a second copy: overwrite in place, which needs none beyond it.
            (self.run_dir / rundir.METRICS).write_text(json.dumps({
                **self.base, "status": "failed", "step": self.loop.step,
                "reason": f"could not write metrics.json: {reason}"}))
            raise
        self.tracker.finish({f"final/{k}": v for k, v in final.items() if isinstance(v, (int, float))}
                            | {"status": status})
        self.recorder.close()
        return result


class _StopSignals:
    """SIGUSR2 and SIGTERM only set ``received`` (the signal's name) while installed, so that the loop can
    checkpoint at a step boundary; ``restore`` puts the previous handlers back. Ctrl-C (SIGINT) and a terminal's
    hang-up (SIGHUP) do the same with ``terminal`` (the command line's runs), where the process has their default
    handling (not under ``nohup``, which ignores them, nor in a host that set its own): the first Ctrl-C says so on
    stderr, a second one (or one after another stop signal) raises KeyboardInterrupt at once. Installed only in the
    main thread (Python delivers signals there; elsewhere the process keeps its handlers). From the first signal on
    (but Ctrl-C: its user is there to press it again), the process has ``rundir.STOP_WAIT_S`` seconds until
    ``restore`` (a launcher waits as long), then a watchdog thread SIGKILLs it: a run whose launcher died (a Ray
    worker's run outlives it to checkpoint) must not hang holding its lock. Python runs a handler between bytecodes,
    so a main thread already stuck in native code when the signal comes never arms the deadline (its launcher's
    SIGKILL, or an operator, ends it)."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
    TERMINAL = {signal.SIGINT: signal.default_int_handler, signal.SIGHUP: signal.SIG_DFL}  # and their defaults

    def __init__(self, terminal: bool = False) -> None:
        self.received = ""
        self.previous: dict[int, Any] = {}
        self.armed_at: float | None = None  # when the first stop signal came (time.monotonic)
        self._done = threading.Event()
        if threading.current_thread() is threading.main_thread():
            threading.Thread(target=self._watch, daemon=True, name="tiedlab-stop-deadline").start()
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
            for sig, default in self.TERMINAL.items() if terminal else ():
                if signal.getsignal(sig) is default:
                    self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received:
            raise KeyboardInterrupt  # Ctrl-C after a stop: stop now (the last checkpoint stands)
        first = not self.received
        self.received = self.received or signal.Signals(signum).name  # before the line below: a Ctrl-C that
        # comes while it is written runs this handler again, inside this one, and must count as the second
        if first and signum == signal.SIGINT:
            _tell("[tiedlab] Ctrl-C: stopping at the next step with a checkpoint, or after the final evaluation "
                  "(Ctrl-C again: stop now)")
        if self.armed_at is None and signum != signal.SIGINT:
            self.armed_at = time.monotonic()  # a plain assignment: the watchdog reads it (no thread starts here)

    def _watch(self) -> None:
        """SIGKILL this process ``rundir.STOP_WAIT_S`` after the first stop signal, unless ``restore`` came first."""
        while not self._done.wait(min(1.0, rundir.STOP_WAIT_S / 4)):
            if self.armed_at is not None and time.monotonic() - self.armed_at > rundir.STOP_WAIT_S:
                os.kill(os.getpid(), signal.SIGKILL)

    def deliver(self, err: BaseException) -> None:
        """While ``err`` ends the run: put the previous handlers back and deliver a stop signal that waited for a
        step boundary now, as if it had not waited (a KeyboardInterrupt, a second Ctrl-C, is that stop already)."""
        self.restore()
        if self.received and not isinstance(err, KeyboardInterrupt):
            signal.raise_signal(signal.Signals[self.received])

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        self._done.set()


def _tell(line: str) -> None:
    """``line`` on stderr from a signal handler: one unbuffered write (a print there could re-enter the stream's
    buffer that the interrupted code was writing); on a terminal on a line of its own (after ^C or a progress bar)."""
    try:
        os.write(2, (("\n" if os.isatty(2) else "") + line + "\n").encode())
    except OSError:
        pass  # no console left: the run's record says why it stopped


def _make_paradigm(cfg: Any, device: torch.device) -> Paradigm:
    """The run's paradigm adapter (its options were checked before the lock: ``config.check_values``)."""
    return get_paradigm(cfg.paradigm)(cfg.data, cfg.model, device, seed=int(cfg.seed),
                                      batch_size=int(cfg.train.batch_size))


def _width(cfg: DictConfig, paradigm: Paradigm) -> dict[str, Any]:
    """metrics.json's ``width``: the config key that holds the model's width (the adapter's ``width_key``; None:
    no one width) and its value, so that the report needs no table of where each paradigm keeps it."""
    key = paradigm.width_key
    return {"key": key, "value": OmegaConf.select(cfg, key) if key else None}


def _keep_traceback(run_dir: Path) -> str:
    """Write the exception being handled to ``run_dir/traceback.txt``; returns " (traceback in PATH)"."""
    trace = run_dir / rundir.TRACEBACK
    try:
        rundir.write_text(trace, traceback.format_exc())
    except OSError:
        return ""
    return f" (traceback in {trace})"


def _finished(cfg: Any, previous: dict[str, Any]) -> bool:
    """A diverged run, or a completed one that trained all its steps or used up this config's time limit (a run
    stopped by ``train.time_limit_s`` continues when rerun with a larger limit)."""
    if previous.get("status") == "diverged":
        return True
    if previous.get("status") != "completed":
        return False
    if previous.get("step", 0) >= previous.get("total_steps", 0):
        return True
    limit = cfg.train.time_limit_s
    spent = (previous.get("metrics") or {}).get("time/train_s", 0.0)
    return limit is not None and isinstance(spent, (int, float)) and spent >= float(limit)


def _say(progress: Any, line: str) -> None:
    """One log line on stderr, above the progress bar when there is one."""
    if progress is not None:
        progress.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _eval_record(paradigm: Paradigm, model: nn.Module, data: DataBundle, loop: LoopState, recorder: StatsRecorder,
                 splits: tuple[str, ...], progress: Any = None,
                 during: Callable[[str], contextlib.AbstractContextManager] | None = None) -> dict[str, Any]:
    """Evaluation on ``splits`` plus the training window's means, stamped with step and training time; says
    what it evaluates and what came out (evaluation can take longer than training). Each split is scored inside
    ``during(split)`` (the equilibrium probe's capture of the validation split alone)."""
    record: dict[str, Any] = {"step": loop.step, "epoch": loop.epoch, "time/train_s": loop.train_s}
    if loop.window:
        keys = set().union(*loop.window)
        for key in sorted(keys):
            vals = [w[key] for w in loop.window if key in w and not math.isnan(w[key])]
            if vals:
                record[key if "/" in key else f"train/{key}"] = float(sum(vals) / len(vals))
    for split in splits:
        _say(progress, f"[tiedlab] step {loop.step}: evaluating {split} ...")
        t0 = time.perf_counter()
        with during(split) if during is not None else contextlib.nullcontext():
            scores = _evaluate(paradigm, model, data, split, recorder)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in scores.items() if not k.startswith("core/"))
        _say(progress, f"[tiedlab] step {loop.step}: {shown} ({time.perf_counter() - t0:.1f} s)")
        record.update(scores)
    return record
