"""Read run directories (config.yaml, history.jsonl, metrics.json) into ``Run`` records with labels.

The run directory is the report's only input (see ``tiedlab.paradigms.rundir``). A run without
metrics.json (just started) or with status running / failed / diverged is kept, never dropped.

A DEQ run's metrics.json may state whether it reached its fixed point (``"equilibrium"``, see
``parse_equilibrium``); a completed run that states it did not is kept but set apart: counted and shown, never
averaged into its cell or a primary comparison's arm (``set_apart``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from tiedlab.paradigms import rundir

CONFIG, HISTORY, METRICS = rundir.CONFIG, rundir.HISTORY, rundir.METRICS

# Runs written before metrics.json named its primary metric: the first of these that they logged (else loss, lower).
FALLBACK: tuple[tuple[str, bool], ...] = (("acc", True), ("knn_acc", True))

# Runs written before metrics.json named their width (``"width": {"key": ..., "value": ...}``): where in
# ``model`` the width is guessed to live (first present wins).
WIDTH_KEYS = ("width", "hidden", "d_model", "hidden_channels", "channels")
# The config keys that tell replicates of one cell apart (they change what a run computes, so unlike the
# bookkeeping keys they are fingerprinted). ``data.fold`` tells runs apart like the seed: the runs of a k-fold
# cross-validation (TU graph tasks) form one cell whose descriptive mean and std are over the folds. The primary
# comparisons read the same keys from run names (``primary.REPLICATE_KEYS`` is this tuple) and test seeds, a
# seed's folds averaged (folds of one seed are not independent replicates).
REPLICATE_KEYS = ("seed", "data.fold")
# Config keys that never distinguish one cell from another: the replicate keys, the mask seed (null: the run's
# seed) and the run-directory bookkeeping keys (devices, logging, resume; their one list is in rundir).
NOT_GROUPED = (*REPLICATE_KEYS, "mask.seed", *rundir.NOT_FINGERPRINTED)
# Options added after runs were made, at the value the runs that predate them ran with: a run whose config lacks
# the key groups as if it had this value (so a study that spans the commit adding ``train.channels_last`` keeps one
# cell per setting, and runs that turned the option on still form cells of their own).
ADDED_LATER: dict[str, Any] = {"train.channels_last": False}
# metrics.json's "equilibrium" object (DEQ runs only): its keys, and the measured values in the order reports show
# them (``tiedlab.core.equilibrium.METRIC_KEYS``; a run may measure others, shown after these).
EQUILIBRIUM_KEYS = ("at_equilibrium", "flags", "measured", "thresholds", "measured_with")
EQUILIBRIUM_REQUIRED = ("at_equilibrium", "flags", "measured")
EQUILIBRIUM_MEASURES = ("rel_residual", "converged_fraction", "spectral_norm", "grad_cosine")


@dataclass(frozen=True)
class Equilibrium:
    """A DEQ run's equilibrium check as its metrics.json states it: whether it is at its fixed point, the reasons
    it is not (``flags``, empty when it is), what was measured (nan: not measured or undefined) and the thresholds
    it was judged against (None: not checked), and the settings the judged values were measured with
    (``measured_with``: power iterations, the reference solve's tolerance and budget; empty in runs from before it
    was recorded)."""

    at_equilibrium: bool
    flags: tuple[str, ...] = ()
    measured: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    measured_with: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The metrics.json form (``parse_equilibrium`` reads it back)."""
        return {"at_equilibrium": self.at_equilibrium, "flags": list(self.flags), "measured": dict(self.measured),
                "thresholds": dict(self.thresholds),
                **({"measured_with": dict(self.measured_with)} if self.measured_with else {})}

    def judged_by(self) -> dict[str, Any]:
        """What decided the verdict besides the measured values: the thresholds and the settings the measurements
        used (runs judged under different ones were judged by different tests)."""
        return {**self.thresholds, **{f"measured_with.{k}": v for k, v in self.measured_with.items()}}


def _number(value: Any, what: str, allow_none: bool) -> float | None:
    """A JSON number, "nan"/"inf"/"-inf" string (how run dirs store non-finite floats) or, if allowed, null.

    Raises:
        ValueError: anything else, naming ``what`` and the value.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(value)
    raise ValueError(f"{what}={value!r} must be a number{', null' if allow_none else ''} or \"nan\"/\"inf\"")


def _numbers(raw: Any, what: str, allow_none: bool) -> dict[str, float | None]:
    """``{name: number}`` from a JSON object (see ``_number``). Raises ValueError naming the bad entry."""
    if not isinstance(raw, dict):
        raise ValueError(f"{what} must be an object {{name: number}}, got {raw!r}")
    return {str(k): _number(v, f"{what}.{k}", allow_none) for k, v in raw.items()}


def parse_equilibrium(raw: Any) -> Equilibrium | None:
    """metrics.json's ``"equilibrium"`` value: None when absent or null (not measured), else an ``Equilibrium``.

    The shape: ``{"at_equilibrium": bool, "flags": [str, ...], "measured": {name: number | null},
    "thresholds": {name: number | null}, "measured_with": {name: number}}`` ("thresholds" and "measured_with"
    optional; non-finite numbers as "nan"/"inf" strings; a
    null measured value reads as nan). ``at_equilibrium`` is false exactly when ``flags`` names a reason.

    Raises:
        ValueError: any other shape, naming the bad key or value.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"equilibrium must be an object with keys {list(EQUILIBRIUM_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(EQUILIBRIUM_KEYS))
    missing = [k for k in EQUILIBRIUM_REQUIRED if k not in raw]
    if unknown or missing:
        raise ValueError(f"equilibrium has unknown key(s) {unknown} / lacks {missing}; its keys are "
                         f"{list(EQUILIBRIUM_KEYS)} (thresholds and measured_with optional)")
    at, flags = raw["at_equilibrium"], raw["flags"]
    if not isinstance(at, bool):
        raise ValueError(f"equilibrium.at_equilibrium={at!r} must be true or false")
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ValueError(f"equilibrium.flags={flags!r} must be a list of strings")
    if at == bool(flags):
        raise ValueError(f"equilibrium.at_equilibrium={at!r} contradicts equilibrium.flags={flags!r} (a run is at "
                         "equilibrium exactly when no flag names a reason it is not)")
    measured = {k: math.nan if v is None else v
                for k, v in _numbers(raw["measured"], "equilibrium.measured", allow_none=True).items()}
    thresholds = _numbers(raw.get("thresholds") or {}, "equilibrium.thresholds", allow_none=True)
    measured_with = _numbers(raw.get("measured_with") or {}, "equilibrium.measured_with", allow_none=True)
    return Equilibrium(at, tuple(flags), measured, thresholds, measured_with)


@dataclass
class Run:
    """One run directory as the report sees it."""

    dir: Path
    name: str  # display path, relative to the folder it was found under
    config: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    status: str  # completed | running | diverged | failed | missing (no metrics.json) | unreadable
    reason: str
    provenance: list[dict[str, Any]] = field(default_factory=list)  # one entry per process that trained it
    step: int | None = None
    total_steps: int | None = None
    paradigm: str = "?"
    dataset: str = "?"
    seed: int | None = None
    mode: str = "?"
    label: str = "?"
    width: int | None = None
    width_key: str | None = None  # the config key the width was read from (e.g. "model.width")
    depth: int | None = None
    mask_mode: str = "none"
    mask_kind: str = ""
    sparsity: float = 0.0
    key: dict[str, Any] = field(default_factory=dict)  # the config that defines the run's cell
    metric: str = "acc"  # primary metric name (set per paradigm by ``load_runs``)
    higher_is_better: bool = True
    declared: tuple[str, bool] | None = None  # the primary metric metrics.json names, if it names one
    equilibrium: Equilibrium | None = None  # DEQ runs whose metrics.json states it; None: not measured / not a DEQ
    # a rebuild from summary.json (no history): each history key's move over the last 20% of steps, as the summary
    # kept it (``primary.late_change``); None: not kept (summaries written before it was)
    late_changes: dict[str, float] | None = None
    from_summary: bool = False  # rebuilt by ``runs_from_summary`` (no run directory read)

    @property
    def at_equilibrium(self) -> bool | None:
        """Whether the run reached its fixed point (None: not measured, or not a DEQ)."""
        return None if self.equilibrium is None else self.equilibrium.at_equilibrium

    @property
    def equilibrium_flags(self) -> list[str]:
        """Why the run is not at equilibrium (empty when it is, or when it was not measured)."""
        return [] if self.equilibrium is None else list(self.equilibrium.flags)

    @property
    def equilibrium_measured(self) -> dict[str, float]:
        """The equilibrium measurements (rel_residual, converged_fraction, ...; empty when not measured)."""
        return {} if self.equilibrium is None else dict(self.equilibrium.measured)

    def value(self, split: str = "val") -> float:
        """The final primary metric on ``split`` (nan if absent)."""
        return self.metrics.get(f"{split}/{self.metric}", math.nan)

    def score(self, value: float) -> float:
        """``value`` signed so that larger is always better."""
        return value if self.higher_is_better else -value

    def curve(self, x: str = "time/train_s") -> list[tuple[float, float]]:
        """(``x``: training seconds, or ``"step"``; val primary metric) at each evaluation in history.jsonl."""
        out = []
        for rec in self.history:
            t, v = to_float(rec.get(x)), to_float(rec.get(f"val/{self.metric}"))
            if math.isfinite(t) and math.isfinite(v):
                out.append((t, v))
        return out


# metrics measured on the training process: a seed batch of K shares them (seconds / K, the batch's peak memory)
PER_PROCESS_METRICS = ("time/", "throughput/", "memory/")


# seed batches exist since this time (commit 7918ec6); provenance records a session's batch size since 35e65b8
SEED_BATCHES_SINCE = "2026-12-02T05:07:36+00:00"


def seed_batch_sizes(run: Any) -> tuple[int, ...]:
    """The sizes of the seed batches a run trained in, one per distinct size over its sessions (1: trained alone,
    as every session that started before seed batches existed did; () when its provenance does not say). A run
    trained in a batch of K records the batch's step seconds divided by K and the batch's peak memory
    (``paradigms/seedbatch.py``), so its time and memory compare only with runs of the same K. Takes any run-like
    object."""
    sizes = set()
    for p in getattr(run, "provenance", None) or []:
        if not isinstance(p, dict):
            continue
        if "seed_batch" in p:
            sizes.add(int(p.get("seed_batch") or 1))
        elif _started_before(p.get("started"), SEED_BATCHES_SINCE):
            sizes.add(1)
    return tuple(sorted(sizes))


def _started_before(started: Any, when: str) -> bool:
    """Whether an ISO time (a session's ``started``) lies before ``when`` (False when it is not a time)."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(str(started)) < dt.datetime.fromisoformat(when)
    except (TypeError, ValueError):
        return False


def world_sizes(run: Any) -> tuple[int, ...]:
    """The numbers of processes (``torchrun`` ranks) a run's sessions trained over, one per distinct number (a
    session that does not record it trained alone: 1). A rank's step time and its memory are one process's share."""
    return tuple(sorted({int(p.get("world_size") or 1) for p in getattr(run, "provenance", None) or []
                         if isinstance(p, dict)})) or (1,)


def _recorded(run: Any, key: str) -> tuple[int, ...]:
    """The distinct values a run's sessions recorded for a provenance ``key`` (0: a session that recorded none, or
    a run without provenance: unknown)."""
    return tuple(sorted({int(p.get(key) or 0) for p in getattr(run, "provenance", None) or []
                         if isinstance(p, dict)})) or (0,)


Layout = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]

# ``processes_per_device`` is recorded by runs a study launched since this time (commit 84bf38d): a session before it
# does not say, and its runs' seconds do not compare with those of runs that do
PROCESSES_PER_DEVICE_SINCE = "2026-12-07"


def process_layout(run: Any, timing: bool = True) -> Layout:
    """How a run's processes shared their work and their machine: its seed batch sizes (``seed_batch_sizes``), its
    world sizes (``world_sizes``) and, for ``timing`` (seconds, throughput: not memory, which neither moves), the
    threads each session trained with and the most training processes its launcher ran at once on its device
    (``processes_per_device``; 0: a session that does not say; () when not ``timing``). Its time and memory compare
    only with runs of the same layout."""
    if not timing:
        return seed_batch_sizes(run), world_sizes(run), (), ()
    return seed_batch_sizes(run), world_sizes(run), _recorded(run, "threads"), _recorded(run, "processes_per_device")


def is_timing(metric: str) -> bool:
    """Whether ``metric`` is a time or a throughput (threads and a shared device move it), not a memory."""
    return not metric.startswith("memory/")


def mixed_layouts(runs: Iterable[Any], timing: bool = True) -> str:
    """What differs in how the runs trained ("K = 1 vs 4": seed batches of different sizes, "unknown" for runs whose
    provenance does not say beside runs whose does, "K = 1 vs 1 over 2 processes": different numbers of
    processes; for ``timing``, "threads 1 vs 2" and "processes per device 1 vs 2"), so that their per-process
    metrics (``PER_PROCESS_METRICS``) do not compare; "" when they trained alike, or no run's provenance says.
    ``layout_why`` says why."""
    return layout_difference({process_layout(r, timing) for r in runs})


def _values_label(values: tuple[int, ...]) -> str:
    return "/".join(str(v) if v else "unrecorded" for v in values)


# a layout's parts as a report names them: the seed batches with their processes ("K = 4 over 2 processes"), the
# threads, the processes per device; each with the part of the layout it reads, how it says it and why runs that
# differ in it do not compare
LAYOUT_PARTS = (("K = ", lambda x: x[:2], lambda v: layout_label(v),
                 "a batched run's seconds are its batch's divided by K and its memory the batch's, a torchrun "
                 "rank's one process's share"),
                ("threads ", lambda x: x[2], _values_label, "a step's seconds depend on its threads"),
                ("processes per device ", lambda x: x[3], _values_label,
                 "processes sharing a device slow each other's steps (recorded by runs a study launched since "
                 f"{PROCESSES_PER_DEVICE_SINCE})"))


def differing_parts(layouts: Iterable[Layout]) -> list[int]:
    """The indices into ``LAYOUT_PARTS`` of the parts in which ``layouts`` differ."""
    layouts = list(layouts)
    return [i for i, (_, part, _, _) in enumerate(LAYOUT_PARTS) if len({part(x) for x in layouts}) > 1]


def layout_difference(layouts: Iterable[Layout], ordered: bool = False) -> str:
    """What differs between ``layouts``, "; "-joined: "K = 1 vs 4" (seed batch sizes, with processes:
    ``layout_label``), "threads 1 vs 2", "processes per device 2 vs 1" ("" when alike); each part's values in
    increasing order ("unknown" first), or with ``ordered`` in the layouts' order (a pair: "K = 4 vs 1")."""
    layouts = list(layouts)
    out = []
    for i in differing_parts(layouts):
        name, part, label, _ = LAYOUT_PARTS[i]
        values = list(dict.fromkeys(part(x) for x in layouts))
        out.append(name + " vs ".join(label(v) for v in (values if ordered else sorted(values))))
    return "; ".join(out)


def layout_why(layouts: Iterable[Layout]) -> str:
    """Why runs of ``layouts`` do not compare: the reason of each part in which they differ, "; "-joined."""
    return "; ".join(LAYOUT_PARTS[i][3] for i in differing_parts(layouts))


def layout_parts_label(layout: Layout, parts: Iterable[int]) -> str:
    """``layout``'s ``parts`` (indices into ``LAYOUT_PARTS``) as a report says them: "K = 1, threads 2"."""
    return ", ".join(LAYOUT_PARTS[i][0] + LAYOUT_PARTS[i][2](LAYOUT_PARTS[i][1](layout)) for i in parts)


def seed_batch_label(sizes: tuple[int, ...]) -> str:
    """``seed_batch_sizes`` as a report says it: "4", "1/4" (sessions of each), "unknown" (provenance silent)."""
    return "/".join(map(str, sizes)) if sizes else "unknown"


def layout_label(layout: tuple[tuple[int, ...], ...]) -> str:
    """A layout's seed batches as a report says them: the seed batch label, with " over N processes" unless 1."""
    sizes, worlds = layout[:2]
    return seed_batch_label(sizes) + ("" if worlds == (1,) else f" over {'/'.join(map(str, worlds))} processes")


def set_apart(run: Any) -> bool:
    """Whether a run completed but is not certified at equilibrium: flagged, or a DEQ (``mode`` "deq") whose
    metrics.json holds no equilibrium check (a baseline must be shown to work before it is compared). Counted and
    shown, never averaged into a cell or a primary arm. Takes any run-like object (one without ``at_equilibrium``
    was not measured; one without ``mode`` is judged by its flag alone)."""
    if getattr(run, "status", None) != "completed":
        return False
    at = getattr(run, "at_equilibrium", None)
    return at is False or (at is None and getattr(run, "mode", None) == "deq")


NOT_MEASURED = "not measured (a DEQ run whose metrics.json holds no equilibrium check)"


def apart_reasons(run: Any) -> list[str]:
    """Why ``set_apart`` sets a run apart: its flags, or ``NOT_MEASURED``; [] for a run it keeps."""
    if not set_apart(run):
        return []
    return list(getattr(run, "equilibrium_flags", None) or []) or [NOT_MEASURED]


def to_float(value: Any) -> float:
    """A float from a JSON value; "nan"/"inf" strings and numbers convert, anything else is nan."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``; lists become tuples so they can be compared and hashed."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: "{}"}
    if isinstance(obj, list):
        return {prefix[:-1]: tuple(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in obj)}
    return {prefix[:-1]: obj}


def paradigm_name(raw: str) -> str:
    """The name of a run's paradigm where its metrics.json does not record the adapter's (``paradigm_name``, since
    2026-12-07): "vision" -> "vision"; "support.toy:ToyParadigm" -> "toy" (class name, lowercased, less
    "paradigm")."""
    if ":" not in raw and "." not in raw:
        return raw
    cls = raw.rpartition(":")[2] if ":" in raw else raw.rpartition(".")[2]
    short = cls.lower().replace("paradigm", "")
    return short or raw.partition(":")[0].rpartition(".")[2] or raw


def mask_sparsity(mask: dict[str, Any], depth: Any = None) -> float:
    """The fraction of masked weights per layer (1 - n/m for N:M masks, 1 - 1/depth for disjoint masks, which
    partition each weight between the layers); 0 without a mask."""
    if mask.get("mode", "none") == "none":
        return 0.0
    if mask.get("mode") == "disjoint":
        layers = to_float(depth)
        return 1.0 - 1.0 / layers if layers and layers >= 1 else math.nan
    if mask.get("kind") == "nm":
        n, m = to_float(mask.get("n", 2)), to_float(mask.get("m", 4))
        return 1.0 - n / m if m else 0.0
    return to_float(mask.get("sparsity", 0.0))


def mask_active(mask: dict[str, Any]) -> bool:
    """Whether any weight is masked (as ``core.MaskSpec.active``: disjoint masks always, a kind other than
    unstructured at any sparsity, unstructured masks above sparsity 0)."""
    mode = mask.get("mode", "none")
    return mode != "none" and (mode == "disjoint" or mask.get("kind", "unstructured") != "unstructured"
                               or to_float(mask.get("sparsity", 0.0)) > 0)


def variant_label(config: dict[str, Any]) -> str:
    """"explicit", "tied", "tied+distinct/unstructured@0.5", "deq anderson+ift", ... plus "+jac"."""
    block, mask = config.get("block") or {}, config.get("mask") or {}
    mode = block.get("mode", "?")
    if mode == "deq":
        label = f"deq {(config.get('solver') or {}).get('name', '?')}+{(config.get('grad') or {}).get('mode', '?')}"
    else:
        label = str(mode)
    if mask_active(mask):
        label += f"+{mask.get('mode')}/{mask.get('kind', 'unstructured')}@{mask_sparsity(mask, block.get('depth')):g}"
    if mode == "deq" and to_float((config.get("train") or {}).get("jacobian_weight", 0.0)) > 0:
        label += "+jac"
    return label


def group_key(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config less seeds, bookkeeping, and the keys a run's mode ignores; an option the config
    predates at the value it ran with (``ADDED_LATER``).

    Solver and gradient settings only matter to DEQ; mask settings only when a mask is active
    (and n, m only for N:M masks), but ``mask.min_dim`` under a weight or spectral norm (as the fingerprint).
    """
    flat = {**ADDED_LATER, **flatten(config)}
    mode = (config.get("block") or {}).get("mode")
    mask = config.get("mask") or {}

    def dropped(key: str) -> bool:
        if any(key == k or key.startswith(k + ".") for k in NOT_GROUPED):
            return True
        if mode != "deq" and key.split(".")[0] in ("solver", "grad"):
            return True
        if key.startswith("mask.") and not mask_active(mask):  # but min_dim: a norm picks its weights by it
            return not (key == "mask.min_dim" and (config.get("block") or {}).get("norm", "none") != "none")
        if key in ("mask.n", "mask.m") and mask.get("kind") != "nm":
            return True
        return key == "mask.sparsity" and mask.get("kind") == "nm"

    return {k: v for k, v in flat.items() if not dropped(k)}


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        return json.loads(path.read_text()), ""
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path.name} unreadable ({type(err).__name__}: {err})"


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """history.jsonl lines; a cut last line (a killed run) ends the history, as does a line that is not a JSON
    object (an unreadable file gives no history)."""
    path = run_dir / HISTORY
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text() if path.exists() else ""
    except (OSError, UnicodeDecodeError):
        return out
    for line in text.splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(record, dict):
                break
            out.append(record)
    return sorted(out, key=lambda r: to_float(r.get("step", 0)))


def load_run(run_dir: Path, name: str | None = None) -> Run:
    """One run directory; never raises on missing or broken files (they become the status)."""
    run_dir = Path(run_dir)
    config: dict[str, Any] = {}
    problems = []
    if (run_dir / CONFIG).exists():
        try:
            config = yaml.safe_load((run_dir / CONFIG).read_text()) or {}
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
            problems.append(f"config.yaml unreadable ({type(err).__name__})")
        if not isinstance(config, dict):
            problems.append(f"config.yaml holds a {type(config).__name__}, not a mapping")
            config = {}
    if (run_dir / METRICS).exists():
        result, problem = _read_json(run_dir / METRICS)
        if result is not None and not isinstance(result, dict):
            result, problem = None, f"metrics.json holds a {type(result).__name__}, not an object"
        if result is None:
            result, status, reason = {}, "unreadable", problem
        else:
            status, reason = str(result.get("status", "unknown")), str(result.get("reason", "") or "")
    else:
        result, status, reason = {}, "missing", "no metrics.json yet (not started, or killed before its first write)"
    if problems and status != "missing":  # results whose config cannot be read belong to no cell
        status = "unreadable"
    if config and result.get("fingerprint") and not rundir.same_config(config, result):
        # config.yaml was edited, or the files come from two runs: never file the results under this config.
        problems.append(f"config.yaml does not match the fingerprint in metrics.json (version "
                        f"{result.get('fingerprint_version', 1)}: {result['fingerprint']}): edited after the run or "
                        "mixed with another run's files")
        status, config = "unreadable", {}
    block, mask = config.get("block") or {}, config.get("mask") or {}
    equilibrium, problem = read_equilibrium(result, block.get("mode") if config else None)
    if problem:
        problems.append(problem)
        status = "unreadable"
    if problems:
        reason = "; ".join([reason, *problems]) if reason else "; ".join(problems)
    metrics = {k: to_float(v) for k, v in (result.get("metrics") or {}).items()}
    raw_paradigm = str(config.get("paradigm") or result.get("paradigm") or "?")
    width_key, width = run_width(result, config)
    dataset = (config.get("data") or {}).get("name") or result.get("dataset") or "?"
    seed = config.get("seed")
    key = group_key(config) if config else {"dir": str(run_dir)}
    devices = [p["device"] for p in result.get("provenance") or [] if isinstance(p, dict) and p.get("device")]
    if config and devices:  # train.device is not grouped, but with train.amp it decides the precision: the last
        # session's (a resume that would change it is refused, and a fresh start after a failed session trains alone)
        key["train.precision"] = rundir.precision(devices[-1], bool((config.get("train") or {}).get("amp", True)))
    return Run(
        dir=run_dir, name=name or run_dir.name, config=config, metrics=metrics, history=read_history(run_dir),
        status=status, reason=reason, provenance=[p for p in result.get("provenance") or [] if isinstance(p, dict)],
        declared=_declared(result.get("primary_metric")), equilibrium=equilibrium,
        step=result.get("step"), total_steps=result.get("total_steps"),
        paradigm=str(result.get("paradigm_name") or paradigm_name(raw_paradigm)), dataset=str(dataset), seed=seed if isinstance(seed, int) else None,
        mode=str(block.get("mode", "?")), label=variant_label(config) if config else "?", width=width,
        width_key=width_key,
        depth=block.get("depth") if isinstance(block.get("depth"), int) else None,
        mask_mode=str(mask.get("mode", "none")) if mask_active(mask) else "none",
        mask_kind=str(mask.get("kind", "")) if mask_active(mask) else "",
        sparsity=mask_sparsity(mask, block.get("depth")), key=key,
    )


def read_equilibrium(result: dict[str, Any], mode: str | None) -> tuple[Equilibrium | None, str]:
    """(the run's equilibrium check, "") from metrics.json, or (None, the problem) when its "equilibrium" value is
    malformed or stated for a run that is not a DEQ (``mode``: the config's block.mode; None when unknown)."""
    try:
        equilibrium = parse_equilibrium(result.get("equilibrium"))
    except ValueError as err:
        return None, f"metrics.json: {err}"
    if equilibrium is not None and mode is not None and mode != "deq":
        return None, (f"metrics.json states an equilibrium for a run whose block.mode is {mode!r}; only DEQ runs "
                      "(block.mode 'deq') measure one")
    return equilibrium, ""


def run_width(result: dict[str, Any], config: dict[str, Any]) -> tuple[str | None, int | None]:
    """(config key, value) of a run's width: what metrics.json names (``"width": {"key": "model.width",
    "value": 64}``; a null key: the model has no one width), else, for runs written before it named it, the first
    of ``WIDTH_KEYS`` in ``model`` that holds an int; (None, None) when neither says."""
    declared = result.get("width")
    if isinstance(declared, dict) and "key" in declared and isinstance(declared["key"], (str, type(None))):
        key, value = declared["key"], declared.get("value")
        if key is None:
            return None, None
        if value is None:  # metrics.json names only the key: the value is the config's
            value = flatten(config).get(key)
        return key, value if isinstance(value, int) and not isinstance(value, bool) else None
    model = config.get("model") or {}
    guess = next((k for k in WIDTH_KEYS if isinstance(model.get(k), int)), None)
    return (f"model.{guess}", model[guess]) if guess is not None else (None, None)


def _declared(value: Any) -> tuple[str, bool] | None:
    if isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("higher_is_better"), bool):
        return value["name"], value["higher_is_better"]
    return None


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() or (path / METRICS).is_file()


def find_run_dirs(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(run dir, display name) for each run dir given or found below a folder given.

    Hidden folders (e.g. Hydra's ``.hydra``, which holds its own config.yaml) are skipped, and the
    search does not descend into a run dir. Symbolic links to folders are followed (a report may gather runs
    linked in from elsewhere), each folder read once (a link to a folder above it does not loop).

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    paths = [Path(p) for p in paths]
    found: dict[Path, str] = {}
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        # With several inputs, names start with the input's own name so that they stay distinct.
        prefix = f"{p.resolve().name}/" if len(paths) > 1 else ""
        if is_run_dir(p):
            found.setdefault(p.resolve(), p.resolve().name)
            continue
        seen: set[Path] = set()
        for root, dirs, _files in os.walk(p, followlinks=True):
            here = Path(root)
            if here.resolve() in seen:
                dirs[:] = []
                continue
            seen.add(here.resolve())
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if here != p and is_run_dir(here):
                found.setdefault(here.resolve(), prefix + str(here.relative_to(p)))
                dirs[:] = []
    return sorted(found.items(), key=lambda item: item[1])


def primary_metric(paradigm: str, runs: list[Run]) -> tuple[str, bool]:
    """(metric, higher is better) of a paradigm: what its runs' metrics.json name (the adapter's own
    ``primary_metric``), else, for runs written before they named it, what they logged, else loss.

    Raises:
        ValueError: runs of one paradigm name different primary metrics.
    """
    declared = {r.declared for r in runs if r.declared is not None}
    if len(declared) > 1:
        raise ValueError(f"runs of paradigm {paradigm!r} name different primary metrics: {sorted(declared)}")
    if declared:
        return next(iter(declared))
    keys = set()
    for run in runs:
        keys.update(run.metrics)
        for rec in run.history:
            keys.update(rec)
    for name, higher in FALLBACK:
        if f"val/{name}" in keys:
            return name, higher
    return "loss", False


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under ``paths``, with the primary metric of its paradigm set.

    A run whose dataset is unknown (no data.name in its config and no metrics.json yet) takes the
    dataset of its paradigm's other runs when they all agree on one.
    """
    runs = [load_run(d, name) for d, name in find_run_dirs(paths)]
    by_paradigm: dict[str, list[Run]] = {}
    for run in runs:
        by_paradigm.setdefault(run.paradigm, []).append(run)
    for paradigm, group in by_paradigm.items():
        metric, higher = primary_metric(paradigm, group)
        known = {r.dataset for r in group if r.dataset != "?"}
        for run in group:
            run.metric, run.higher_is_better = metric, higher
            if run.dataset == "?" and len(known) == 1:
                run.dataset = next(iter(known))
    return runs


SUMMARY_CELL, SUMMARY_OTHER = "summary.cell", "summary.other"  # the cell keys of runs rebuilt from a summary


def runs_from_summary(path: str | Path) -> list[Run]:
    """The runs a report's summary.json lists, rebuilt for a new analysis of the same results (new rules, new
    primary comparisons) when the run directories are gone. What summary.json does not keep stays empty: the
    config but the fold (a run's cell is the cell the summary put it in) and the history (no time curves; the
    moves over the last 20% of steps that convergence notes read are kept, ``late_changes``).

    Raises:
        ValueError: the file is not a tiedlab summary.json.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        entries, cells = data["runs"], data.get("cells") or []
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a tiedlab report's summary.json ({type(err).__name__}: {err})") from err
    cell_of = {name: i for i, c in enumerate(cells) for name in c.get("run_names") or []}
    runs = []
    for e in entries:
        equilibrium, problem = read_equilibrium(e, None)
        metric, higher = str(e.get("metric", "acc")), bool(e.get("higher_is_better", True))
        metrics = {k: to_float(v) for k, v in (e.get("metrics") or {}).items()}
        metrics.update({f"val/{metric}": to_float(e.get("val")), f"test/{metric}": to_float(e.get("test"))})
        cell = cells[cell_of[e["name"]]] if e["name"] in cell_of else {}
        # the summary's own cells: one key per cell, and the cell's description as it was ("other")
        key = ({SUMMARY_CELL: cell_of[e["name"]], SUMMARY_OTHER: cell.get("other") or ""} if cell
               else {"dir": e.get("dir")})
        late = e.get("late_changes")
        runs.append(Run(
            dir=Path(str(e.get("dir", e["name"]))), name=str(e["name"]),
            config={"data": {"fold": e["fold"]}} if e.get("fold") is not None else {}, metrics=metrics, history=[],
            late_changes={str(k): to_float(v) for k, v in late.items()} if isinstance(late, dict) else None,
            from_summary=True,
            status="unreadable" if problem else str(e.get("status", "unknown")),
            reason="; ".join(x for x in (str(e.get("reason") or ""), problem) if x), step=e.get("step"),
            total_steps=e.get("total_steps"), paradigm=str(e.get("paradigm", "?")), dataset=str(e.get("dataset", "?")),
            seed=e.get("seed") if isinstance(e.get("seed"), int) else None, mode=str(e.get("mode", "?")),
            label=str(e.get("label", "?")), width=e.get("width"), depth=e.get("depth"),
            mask_mode=str(e.get("mask", "none")), mask_kind=str(e.get("mask_kind") or ""),
            sparsity=to_float(e.get("sparsity", 0.0)), key=key, metric=metric, higher_is_better=higher,
            declared=(metric, higher), equilibrium=equilibrium,
            # the runs' code as the summary kept it; summaries without it: the commit the report was built at
            provenance=e.get("code") or [{"commit": str(data.get("commit", "unknown")), "dirty": None}]))
    return runs
