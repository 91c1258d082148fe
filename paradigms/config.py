"""The structured config schema of a training run, and its translation into core objects.

Hydra composes ``configs/train.yaml`` against ``TrainConfig``, so a misspelt key or a wrong type in
the typed sections is an error that names it. The ``data`` and ``model`` sections belong to the
paradigm and are validated by its ``DataOptions`` / ``ModelOptions`` dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from tiedlab.core import BlockSpec, GradSpec, MaskSpec, SolverSpec
from tiedlab.core.equilibrium import EquilibriumThresholds
from tiedlab.core.spec import NESTED


def config_node(spec: type, name: str, exclude: Sequence[str] = (), defaults: dict[str, tuple[Any, Any]] | None = None,
                extra: Sequence[tuple[str, Any, Any]] = ()) -> type:
    """A Hydra structured-config dataclass with the fields of the core spec ``spec`` (same names, types and
    defaults; ``exclude`` left out), so that the config node and the spec cannot drift apart. ``defaults``
    maps a field to (type, default) where the config means something the core spec cannot (``mask.seed``
    null: the run's seed); ``extra`` adds (name, type, default) fields that only the trainer reads."""
    hints = typing.get_type_hints(spec)
    fields = []
    for f in dataclasses.fields(spec):
        if f.name in exclude:
            continue
        kind, default = (defaults or {}).get(f.name, (hints[f.name], f.default))
        kind = _omegaconf_type(kind)
        if default is not dataclasses.MISSING:
            fields.append((f.name, kind, field(default=default)))
        else:
            fields.append((f.name, kind, field(default_factory=f.default_factory)))
    fields += [(key, kind, field(default=default)) for key, kind, default in extra]
    node = dataclasses.make_dataclass(name, fields)
    node.__module__ = __name__  # pickled by name (joblib workers), found here
    return node


def _omegaconf_type(kind: Any) -> Any:
    """``X | None`` -> ``Optional[X]`` and ``dict`` -> ``dict[str, Any]`` (the spellings OmegaConf reads)."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return Optional[inner[0]] if len(inner) == 1 and len(args) == 2 else Any
    if kind is dict:
        return dict[str, Any]
    return kind


# The config nodes ``block``, ``mask``, ``solver`` and ``grad``: the core specs' own fields.
BlockConfig = config_node(BlockSpec, "BlockConfig", exclude=tuple(NESTED))
MaskConfig = config_node(MaskSpec, "MaskConfig", defaults={"seed": (Optional[int], None)})
SolverConfig = config_node(SolverSpec, "SolverConfig")
GradConfig = config_node(GradSpec, "GradConfig")
# A DEQ run's equilibrium health: the thresholds that flag it "not at equilibrium" (null: not checked), and how
# the trainer measures it. Measuring never changes what the run trains (its RNG and buffers are restored).
EquilibriumConfig = config_node(EquilibriumThresholds, "EquilibriumConfig", extra=(
    ("probe_every", Optional[int], None),  # steps between gradient probes, from the start (null: every evaluation;
    #                                        0: never; any: also at the end)
    ("power_iters", int, 20),  # power-iteration steps of the spectral-norm estimate at z*
    ("reference_tol", float, 1e-6),  # the tight-tolerance reference gradient's forward and adjoint solve
    ("reference_max_iter", int, 300),
))


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clip: Optional[float] = 1.0


@dataclass
class LoopConfig:
    batch_size: int = 128
    epochs: Optional[float] = None
    max_steps: Optional[int] = None  # wins over epochs when set
    eval_every: int = 200
    validate_from: float = 0.0  # evaluations before this fraction of the steps record the training window only
    ckpt_every: int = 200
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    channels_last: bool = False  # convolution weights and activations in NHWC (tensor cores prefer it; needs convs)
    jacobian_weight: float = 0.0  # a DEQ step optimises train/loss + this x core/jacobian_loss (logged apart)
    diverge_residual: float = 1e3  # a DEQ solve whose residual grows this many times over is divergence
    time_limit_s: Optional[float] = None
    progress: Optional[bool] = None  # a progress bar (None: on a terminal, not under CI)
    log_every: Optional[int] = None  # without a bar, a log line every this many steps (None: ~10 per run; 0: none)
    threads: Optional[int] = None
    deq_warmup_steps: int = 0  # a DEQ's first steps unroll its map as a weight-tied model (MDEQ's pretraining)
    deq_warmup_depth: Optional[int] = None  # layers unrolled in the warm-up (None: block.depth; a multiple of K)
    score_train: bool = False  # the final evaluation also scores the training split (fit/...: capacity)


@dataclass
class LoggerConfig:
    name: str = "local"
    project: str = "tiedlab"
    mode: Optional[str] = None
    dir: Optional[str] = None
    group: Optional[str] = None  # the study runner sets "<study>/<grid>"
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    paradigm: str = "vision"
    seed: int = 0
    resume: str = "auto"
    run_dir: Optional[str] = None
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    block: BlockConfig = field(default_factory=BlockConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    grad: GradConfig = field(default_factory=GradConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    equilibrium: EquilibriumConfig = field(default_factory=EquilibriumConfig)


RESUME_CHOICES = ("auto", "true", "false")
OPTIMIZERS = ("adamw", "adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("local", "wandb")


def block_spec(cfg: Any) -> BlockSpec:
    """The core BlockSpec a run config describes, through ``BlockSpec.from_dict`` (which validates it): the
    ``block`` node with its ``mask``, ``solver`` and ``grad`` nodes nested, ``mask.seed`` null set to the run's
    seed."""
    nodes = {name: _plain_node(cfg[name]) for name in ("block", *NESTED)}
    if nodes["mask"].get("seed") is None:
        nodes["mask"]["seed"] = int(cfg.seed)
    return BlockSpec.from_dict(nodes.pop("block"), **nodes)


def _plain_node(node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        return dict(node)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def check_values(cfg: Any) -> BlockSpec:
    """Every value a run reads, checked before anything is written or loaded: the shared sections (``validate``)
    and the paradigm's: its adapter is built (its ``DataOptions``, ``ModelOptions`` and own cross-checks; an
    adapter's constructor loads no data, CONTRIBUTING); a dataset config of another paradigm is named as such.
    Imports the adapter. Returns the block spec.

    Raises:
        ValueError: naming the bad value and the valid choices.
    """
    spec = validate(cfg)
    import torch

    from .base import get_paradigm, paradigms_for_data

    cls = get_paradigm(cfg.paradigm)
    data = _plain_node(cfg.data)
    try:  # the adapter's own constructor: its options and its cross-checks (an adapter loads no data there)
        cls(data, _plain_node(cfg.model), torch.device("cpu"), seed=int(cfg.seed), batch_size=int(cfg.train.batch_size))
    except ValueError as err:  # a dataset config of another paradigm (tiedlab-vision data=cora): say whose it is
        owners = [p for p in paradigms_for_data(data) if p != cfg.paradigm] if "data options" in str(err) else []
        if not owners:
            raise
        name = data.get("name", "this dataset")
        raise ValueError(f"{name} is a {' or '.join(owners)} dataset, not a {cfg.paradigm} one: use "
                         f"tiedlab-{owners[0]} data={name} (or paradigm={owners[0]})") from err
    return spec


def validate(cfg: Any) -> BlockSpec:
    """Reject impossible values before any data is loaded; returns the block spec.

    Raises:
        ValueError: naming the bad value and the valid choices.
    """
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}: nothing reads them (remove them; a '+' override "
                         "adds a key, it does not make it used)")
    spec = block_spec(cfg)
    o, t = cfg.optim, cfg.train
    if o.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={o.name!r} is not valid; choose one of {OPTIMIZERS}")
    if not o.lr > 0:
        raise ValueError(f"optim.lr={o.lr} must be > 0")
    if o.weight_decay < 0:
        raise ValueError(f"optim.weight_decay={o.weight_decay} must be >= 0")
    if not 0 <= o.min_lr_ratio <= 1:
        raise ValueError(f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    if o.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    if t.time_limit_s is not None and not t.time_limit_s >= 0:  # 0: stop after the first step (tests use it)
        raise ValueError(f"train.time_limit_s={t.time_limit_s} must be >= 0 or null")
    if o.clip is not None and not o.clip > 0:
        raise ValueError(f"optim.clip={o.clip} must be > 0 or null")
    if t.batch_size < 1:
        raise ValueError(f"train.batch_size={t.batch_size} must be >= 1")
    if t.epochs is None and t.max_steps is None:
        raise ValueError("set train.epochs or train.max_steps (max_steps wins when both are set)")
    if t.epochs is not None and not t.epochs > 0:
        raise ValueError(f"train.epochs={t.epochs} must be > 0")
    if t.max_steps is not None and t.max_steps < 1:
        raise ValueError(f"train.max_steps={t.max_steps} must be >= 1")
    for key in ("eval_every", "ckpt_every"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key}={getattr(t, key)} must be >= 1")
    if not 0.0 <= t.validate_from <= 1.0:
        raise ValueError(f"train.validate_from={t.validate_from} must be in [0, 1] (a fraction of the run's steps)")
    if t.device not in DEVICES:
        raise ValueError(f"train.device={t.device!r} is not valid; choose one of {DEVICES}")
    if t.jacobian_weight < 0:
        raise ValueError(f"train.jacobian_weight={t.jacobian_weight} must be >= 0")
    if t.jacobian_weight > 0 and spec.jacobian_samples == 0:
        raise ValueError("train.jacobian_weight > 0 needs block.jacobian_samples >= 1")
    if t.deq_warmup_steps < 0:
        raise ValueError(f"train.deq_warmup_steps={t.deq_warmup_steps} must be >= 0")
    if spec.mode == "deq" and t.max_steps is not None and t.deq_warmup_steps >= t.max_steps:
        raise ValueError(f"train.deq_warmup_steps={t.deq_warmup_steps} must be below train.max_steps={t.max_steps}: "
                         "the DEQ would never be solved (a recipe sets the warm-up: lower it for a short run)")
    if t.threads is not None and t.threads < 1:
        raise ValueError(f"train.threads={t.threads} must be >= 1 or null (torch's default: every core)")
    if t.deq_warmup_depth is not None and t.deq_warmup_depth < 1:
        raise ValueError(f"train.deq_warmup_depth={t.deq_warmup_depth} must be >= 1 or null (block.depth)")
    warmup_depth = t.deq_warmup_depth if spec.mode == "deq" and t.deq_warmup_steps else None  # read by a warm-up
    if warmup_depth is not None and warmup_depth % spec.cycle:
        k = spec.cycle  # the warm-up unrolls masks 0, 1, ... cyclically: it must end on the last, as f_K o ... o f_1
        raise ValueError(f"train.deq_warmup_depth={t.deq_warmup_depth} must be a multiple of the DEQ's K={k} distinct "
                         f"masks (block.depth, mask.mode={spec.mask.mode}): the warm-up would end on mask "
                         f"{(t.deq_warmup_depth - 1) % k}, the solved map on mask {k - 1}; choose {k}, {2 * k}, ... "
                         "or null (block.depth)")
    thresholds(cfg)
    e = cfg.equilibrium
    if e.probe_every is not None and e.probe_every < 0:
        raise ValueError(f"equilibrium.probe_every={e.probe_every} must be >= 0 (0: never) or null (every evaluation)")
    for key in ("power_iters", "reference_max_iter"):
        if getattr(e, key) < 1:
            raise ValueError(f"equilibrium.{key}={getattr(e, key)} must be >= 1")
    if not e.reference_tol > 0:
        raise ValueError(f"equilibrium.reference_tol={e.reference_tol} must be > 0")
    if spec.mode == "deq" and e.probe_every != 0:  # the probe's reference: the run's solves made tighter, never
        ift = spec.grad.mode == "ift"                # looser or shorter (a tol of 0 runs to its budget)
        tols = {"solver.tol": spec.solver.tol, **({"grad.tol": spec.grad.tol} if ift else {})}
        loose = [f"{k}={v:g}" for k, v in tols.items() if v > 0 and not e.reference_tol < v]
        if loose:
            raise ValueError(f"equilibrium.reference_tol={e.reference_tol:g} must be below {' and '.join(loose)}: the "
                             "gradient probe compares the run's gradient with one from tighter solves")
        budgets = {"solver.max_iter": spec.solver.max_iter, **({"grad.max_iter": spec.grad.max_iter} if ift else {})}
        longer = [f"{k}={v}" for k, v in budgets.items() if v is not None and v > e.reference_max_iter]
        if longer:
            raise ValueError(f"equilibrium.reference_max_iter={e.reference_max_iter} must be at least "
                             f"{' and '.join(longer)}: the probe's reference solves may not stop before the run's")
    if str(cfg.resume).lower() not in RESUME_CHOICES:
        raise ValueError(f"resume={cfg.resume!r} is not valid; choose one of {RESUME_CHOICES}")
    if cfg.logger.name not in LOGGERS:
        raise ValueError(f"logger.name={cfg.logger.name!r} is not valid; choose one of {LOGGERS}")
    return spec


def thresholds(cfg: Any) -> EquilibriumThresholds:
    """The run's equilibrium thresholds (validated by the core): ``threshold_values`` of its config."""
    return EquilibriumThresholds(**threshold_values(cfg.equilibrium))


def threshold_values(section: Mapping[str, Any]) -> dict[str, Any]:
    """The equilibrium thresholds an ``equilibrium`` config section sets (those it holds: a run's config.yaml from
    before a threshold existed lacks it); the gradient's is None, not checked, when the run never probes its
    gradient (``probe_every=0``)."""
    values = {f.name: section[f.name] for f in dataclasses.fields(EquilibriumThresholds) if f.name in section}
    if section.get("probe_every") == 0 and "grad_cosine" in values:
        values["grad_cosine"] = None
    return values


# the measurement settings a judged value depends on: a check under other settings is another check
MEASURED_WITH = {"spectral_norm": ("power_iters",), "grad_cosine": ("reference_tol", "reference_max_iter")}


def measurement_values(section: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of an ``equilibrium`` config section that the judged measurements depend on (those it holds):
    the power iterations when the spectral norm is judged, the reference solve's tolerance and budget when the
    gradient is ({} when neither is). A run measured with other settings is judged by another test, so the reuse
    check and the report compare them as they compare the thresholds (``threshold_values``)."""
    judged = threshold_values(section)
    return {key: section[key] for name, keys in MEASURED_WITH.items() if judged.get(name) is not None
            for key in keys if key in section}


def ignored_options(cfg: Any, overrides: Sequence[str] = (), unread: Mapping[str, str] | None = None) -> list[str]:
    """Options that a run would silently ignore, one message each: the solver and implicit gradient of a block
    that is not a DEQ, a DEQ's gradient options its grad.mode does not read, a warm-up depth without warm-up
    steps and the depth of a DEQ with one map (no distinct or disjoint masks) that no warm-up reads, equilibrium
    thresholds of a block that is not a DEQ, the optimiser options of another optimiser, mask options without a
    mask mode or of another mask kind, a wandb logger's options with the local logger, and the keys of ``unread``
    (the paradigm's ``unread_options``: key -> why) set on the command line. ``overrides`` are
    the command line's (``key=value``), so that a key set there is named even when its value equals the default.
    The solver, gradient, warm-up, Jacobian and mask options of a block that has none are also left out of the
    run's fingerprint (``rundir.active_config``); the others are named here only.
    """
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    out = [f"{key} ignored: {why}" for key, why in sorted((unread or {}).items()) if key in keys]
    if cfg.block.mode != "deq":
        named = sorted(k for k in keys if k.split(".")[0] in ("solver", "grad"))
        if cfg.grad.mode != "ift" and "grad" not in named:
            named.append(f"grad.mode={cfg.grad.mode}")
        if cfg.solver.name != "anderson" and "solver" not in named:
            named.append(f"solver.name={cfg.solver.name}")
        if named:
            out.append(f"{', '.join(named)} ignored: block.mode={cfg.block.mode} has no solver or implicit gradient "
                       "(only block=deq uses solver.* and grad.*)")
        jacobian = [f"{k}={v}" for k, v in (("block.jacobian_samples", cfg.block.jacobian_samples),
                                            ("train.jacobian_weight", cfg.train.jacobian_weight)) if v]
        warmup = [f"{k}={v}" for k, v in (("train.deq_warmup_steps", cfg.train.deq_warmup_steps),
                                          ("train.deq_warmup_depth", cfg.train.deq_warmup_depth)) if v]
        if warmup:
            out.append(f"{', '.join(warmup)} ignored: the warm-up unrolls a DEQ's map (block=deq)")
        if jacobian:
            out.append(f"{', '.join(jacobian)} ignored: the Jacobian penalty is a DEQ's (block=deq)")
    else:
        # grad.solver and grad.options also serve the gradient probe's IFT reference (at its own tight budget)
        unused = {"ift": ("grad.steps", "grad.tau"), "phantom": ("grad.max_iter", "grad.tol"),
                  "onestep": ("grad.max_iter", "grad.tol", "grad.steps", "grad.tau")}
        named = sorted(k for k in keys if k in unused.get(str(cfg.grad.mode), ()))
        if named:
            out.append(f"{', '.join(named)} ignored: grad.mode={cfg.grad.mode} does not read them (ift: max_iter, "
                       "tol; phantom: steps, tau; onestep: neither)")
        if not cfg.train.deq_warmup_steps and "train.deq_warmup_depth" in keys:
            out.append("train.deq_warmup_depth ignored: train.deq_warmup_steps=0 (no warm-up)")
        warmup_reads_depth = cfg.train.deq_warmup_steps and cfg.train.deq_warmup_depth is None
        if "block.depth" in keys and block_spec(cfg).cycle == 1 and not warmup_reads_depth:
            out.append(f"block.depth ignored: a DEQ with mask.mode={cfg.mask.mode} (no distinct or disjoint masks "
                       "that keep any weight out) solves for one cell's fixed point "
                       "(block.depth counts a DEQ's distinct or disjoint masks, and its warm-up's layers when "
                       "train.deq_warmup_depth=null)")
    if cfg.block.mode != "deq":
        named = sorted(k for k in keys if k.startswith("equilibrium."))
        if named:
            out.append(f"{', '.join(named)} ignored: equilibrium health is measured on a DEQ (block=deq)")
    sgd_only, adam_only = ("optim.momentum", "optim.nesterov"), ("optim.betas",)
    named = sorted(k for k in keys if k in (adam_only if cfg.optim.name == "sgd" else sgd_only))
    if named:
        out.append(f"{', '.join(named)} ignored: optim.name={cfg.optim.name} does not read them (sgd: momentum, "
                   "nesterov; adam, adamw: betas)")
    if cfg.mask.mode != "none":
        named = sorted(k for k in keys if k in (("mask.sparsity",) if cfg.mask.kind == "nm" else ("mask.n", "mask.m")))
        if named:
            out.append(f"{', '.join(named)} ignored: mask.kind={cfg.mask.kind} (nm masks keep n of every m: "
                       "mask.n, mask.m; other kinds: mask.sparsity)")
    if cfg.logger.name == "local":
        named = sorted(k for k in keys if k.startswith("logger.") and k not in ("logger.name", "logger.group"))
        if named:
            out.append(f"{', '.join(named)} ignored: logger.name=local writes only the run directory "
                       "(logger=wandb reads them)")
    if cfg.mask.mode == "none":
        read = {"mask.mode"} | ({"mask.min_dim"} if cfg.block.norm != "none" else set())  # a norm's weights
        named = sorted(k for k in keys if k.startswith("mask.") and k not in read)
        if float(cfg.mask.sparsity) != 0 and "mask.sparsity" not in named:
            named.append(f"mask.sparsity={cfg.mask.sparsity}")
        if named:
            out.append(f"{', '.join(named)} ignored: mask.mode=none (choose mask=distinct or mask=shared)")
    return out


def schema_keys() -> list[str]:
    """Every dotted key of the typed sections of a run config (``block.depth``, ``optim.lr``, ``seed``, ...);
    ``data.*`` and ``model.*`` belong to the paradigm."""
    import dataclasses

    out = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(default)]
        elif f.name not in ("data", "model"):
            out.append(f.name)
    return out


def closest_keys(key: str, n: int = 2) -> list[str]:
    """The valid keys closest to a mistyped one (difflib), best first."""
    import difflib

    return difflib.get_close_matches(key, schema_keys(), n=n, cutoff=0.6)


def unknown_keys(cfg: Any) -> list[str]:
    """Keys in the typed sections of ``cfg`` that the schema does not have (``+block.depht=4`` adds one that
    nothing reads), each with its closest valid key."""
    from omegaconf import OmegaConf

    valid = set(schema_keys())
    plain = OmegaConf.to_container(cfg, resolve=False) if not isinstance(cfg, dict) else cfg
    found = []
    for section, node in plain.items():
        if section in ("data", "model", "hydra"):
            continue
        keys = [f"{section}.{k}" for k in node] if isinstance(node, dict) else [section]
        for key in keys:
            if key not in valid:
                near = closest_keys(key)
                found.append(f"{key}" + (f" (did you mean {' or '.join(near)}?)" if near else ""))
    return found
