"""The paradigm contract: what an adapter gives the engine, and the registry that finds adapters.

An adapter owns its data, the cell (the f(z, x, **ctx) the core block drives), the model around the
block (stem, head), the loss and the metrics. The engine owns everything else: optimiser, schedule,
evaluation cadence, checkpoints, timing, memory and tracking.

Adding a paradigm (see CONTRIBUTING.md for the whole recipe): subclass ``Paradigm``, add one line to
``PARADIGMS`` (or name it as ``"package.module:Class"`` in the config without touching tiedlab),
add ``configs/paradigm/<name>.yaml`` and a data file, and a test module that runs
``tiedlab.paradigms.contract.check_paradigm``. An adapter package is laid out the same way in every
paradigm (ssl reuses vision's data and model modules): ``options.py`` (the ``DataOptions``/``ModelOptions``
dataclasses, checked with the validators below), ``data.py`` or a ``data/`` package (datasets), ``model.py``
(modules) and ``adapter.py`` (the ``Paradigm`` subclass and its ``DataBundle``).

Shared helpers for adapters: the evaluation template (``Paradigm.evaluate`` runs the adapter's ``score`` in
``eval_mode``), ``unwrap`` (the model behind a compile/DataParallel wrapper), ``weights_key`` and
``WeightsCache`` (evaluation work reused while the weights stay), ``check_choice``/``check_int``/``check_range``
(option errors that name the bad value and the choices), ``write_folder`` (a folder written atomically) and
``epoch_seed``/``epoch_generator`` (the one formula for the seed of an epoch's batches) and ``off_the_record``
(forwards left out of the split's block statistics).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import os
import shutil
import tempfile
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Hashable, Iterable, Iterator, Mapping, Sequence, TypeVar

import torch
from torch import nn

from tiedlab.core import BlockSpec, BlockStats

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)


@dataclass
class DataBundle:
    """Data an adapter prepared, already on the training device where that pays.

    Attributes:
        train_batches: ``train_batches(generator)`` yields the batches of one epoch. All randomness
            (order, augmentation) must come from ``generator`` so that a resumed run sees the same
            batches.
        steps_per_epoch: the number of batches ``train_batches`` yields.
        samples_per_step: samples (images, nodes, tokens, ...) one batch holds, for throughput.
        meta: what reports show (``dataset`` display name, sizes, number of classes ...).
    """

    train_batches: Callable[[torch.Generator], Iterable[Any]]
    steps_per_epoch: int
    samples_per_step: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """What one training step computed.

    Attributes:
        loss: scalar to minimise (before the engine adds the Jacobian penalty).
        stats: the BlockStats of the model's core block(s) for this batch (None if the model has none).
        metrics: extra scalars to log (e.g. ``train/acc``): floats, or 0-dim tensors the engine reads at its log
            interval (a tensor left on the device keeps the step free of host synchronisation).
    """

    loss: torch.Tensor
    stats: BlockStats | None = None
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


class Paradigm(ABC):
    """One learning paradigm, plugged into the shared engine.

    Class attributes:
        name: registry key.
        DataOptions, ModelOptions: dataclasses of the paradigm's ``data`` and ``model`` config sections, so
            that a misspelt key is an error naming the valid ones.
        primary_metric: the quality key reports rank by (e.g. ``"acc"``), and whether higher is better.
        width_key: the config key of the model's width, written to metrics.json for the report (None: none).
        data_parallel: True when one run may train data-parallel over several processes (torchrun; see
            ``distributed``): a batch is a tensor, or a tuple, list or dict of tensors, split along dim 0, the
            loss is the mean of per-sample losses and nothing in the model mixes samples (no BatchNorm), so
            the mean of equal slices' gradients is the batch's. Else False or the reason it may not (refused).
        seed_batch: True when K seeds of one config may train as one vectorised model (``seedbatch``: vmap over
            the stacked parameters): the batch is a tensor or a tuple/list/dict of tensors of one shape for every
            seed and ``training_step`` reads nothing back to the host (no ``.item()``). Else False or the reason.
        scores_train: True when ``score`` also takes split "train" (the training data as evaluation sees it,
            without augmentation), which ``train.score_train`` records as ``fit/...``: how well the model fits
            what it trained on, the capacity measure of the mask study.
    """

    name: ClassVar[str]
    DataOptions: ClassVar[type]
    ModelOptions: ClassVar[type]
    primary_metric: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True
    width_key: ClassVar[str | None] = "model.width"  # the config key of the model's width (None: no one width)
    data_parallel: ClassVar[bool | str] = False  # see above: True, or why one run cannot span processes
    scores_train: ClassVar[bool] = False  # see above: score(..., "train") works
    seed_batch: ClassVar[bool | str] = False  # see above: True, or why seeds cannot train as one vmapped model

    @classmethod
    def unread_options(cls, data: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, str]:
        """Config keys this paradigm does not read with the ``data`` and ``model`` sections given, each with why
        (the engine names any of them set on the command line as ignored); none by default."""
        return {}

    def __init__(self, data: Mapping[str, Any], model: Mapping[str, Any], device: torch.device, seed: int = 0,
                 batch_size: int = 128):
        """``data`` and ``model`` are the config sections; ``batch_size`` is ``train.batch_size``."""
        self.data_opts = options_from(self.DataOptions, data, f"{self.name} data")
        self.model_opts = options_from(self.ModelOptions, model, f"{self.name} model")
        self.device = device
        self.seed = seed
        self.batch_size = int(batch_size)

    @abstractmethod
    def build_data(self) -> DataBundle:
        """Load real data from the data root (clear error when absent) and prepare batches."""

    @abstractmethod
    def cell(self, data: DataBundle) -> nn.Module:
        """A freshly initialised cell f(z, x, **ctx) -> z_next for this data."""

    @abstractmethod
    def build_model(self, data: DataBundle, spec: BlockSpec) -> nn.Module:
        """The whole model: input -> stem -> core block over ``self.cell`` -> head."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        """Loss (and block stats) of one batch in train mode."""

    def evaluate(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        """Quality on ``split`` ("val", "test", or "train" where ``scores_train``): ``score`` in eval mode under
        no_grad, the model's mode restored after (an error too).

        Raises:
            ValueError: ``score`` gave a key without the ``split/`` prefix (a test score would overwrite a
                validation one) or, on val and test, no ``split/primary_metric`` (what reports rank and decide by).
        """
        with eval_mode(model):
            out = self.score(model, data, split)
        name = type(self).__name__
        stray = sorted(k for k in out if not k.startswith(f"{split}/"))
        if stray:
            raise ValueError(f"{name}.score(split={split!r}) gave {stray}: every key must start with '{split}/'")
        if split != "train" and f"{split}/{self.primary_metric}" not in out:
            raise ValueError(f"{name}.score(split={split!r}) gave no '{split}/{self.primary_metric}' (its "
                             f"primary_metric); it gave {sorted(out)}")
        return out

    @abstractmethod
    def score(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        """Quality on ``split`` as ``{f"{split}/acc": ..., f"{split}/loss": ...}``; ``evaluate`` calls it with the
        model in eval mode and gradients off. Must include ``f"{split}/{primary_metric}"``, and with
        ``scores_train`` ``"train/loss"`` for the split "train" (the training objective: the report's capacity
        measure, ``fit/loss``)."""

    def artifacts(self, run_dir: str) -> None:
        """Save what a run directory needs to be reloaded without the data root (e.g. a tokenizer)."""


def weights_key(module: nn.Module) -> tuple:
    """Identifies a module's current weights, for caching evaluation work between training steps: every
    parameter's and buffer's storage and in-place version counter. load_state_dict, in-place edits and the
    default optimisers bump the counter; fused optimisers and ``p.data`` writes do not, so a cache keyed on it
    must also be cleared when training steps."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


class WeightsCache:
    """Results computed from a model's weights on one data bundle, reused until either changes.

    Each slot remembers the bundle (weakly: a new bundle never reads an old one's entry) and the
    :func:`weights_key` it was computed for. Clear it when training steps (see :func:`weights_key`).
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[weakref.ref, tuple, Any]] = {}

    def get(self, slot: Hashable, data: Any, weights: tuple, compute: Callable[[], T]) -> T:
        """The value of ``slot`` for ``data`` and ``weights``; ``compute()`` (and kept) when absent or stale."""
        entry = self._entries.get(slot)
        if entry is not None and entry[0]() is data and entry[1] == weights:
            return entry[2]
        value = compute()
        self._entries[slot] = (weakref.ref(data), weights, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode with gradients off; its train/eval mode is restored on exit (an error too)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


_OFF_THE_RECORD = contextvars.ContextVar("tiedlab_off_the_record", default=False)


@contextlib.contextmanager
def off_the_record() -> Iterator[None]:
    """Block calls inside are left out of the engine's block statistics (``core/<split>_*``) and its equilibrium
    probe: for a forward an adapter runs on another split than the one being scored (the graph adapter's
    model selection scores "test" during a "val" evaluation)."""
    token = _OFF_THE_RECORD.set(True)
    try:
        yield
    finally:
        _OFF_THE_RECORD.reset(token)


def on_the_record() -> bool:
    """False inside ``off_the_record``."""
    return not _OFF_THE_RECORD.get()


def unwrap(model: nn.Module, cls: type[M]) -> M:
    """The ``cls`` instance behind a ``torch.compile`` or (Distributed)DataParallel wrapper (or ``model`` itself).

    Raises:
        TypeError: naming the class found, when it is not a ``cls``.
    """
    core = getattr(model, "_orig_mod", model)
    if isinstance(core, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        core = core.module
    if not isinstance(core, cls):
        raise TypeError(f"expected the {cls.__name__} that build_model returned, got {type(core).__name__}")
    return core


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s batches in a run seeded ``seed`` (engine, benchmarks: one formula)."""
    return seed * 100_003 + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded with :func:`epoch_seed`: ``DataBundle.train_batches`` draws epoch ``epoch`` from it."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def write_folder(target: Path, fill: Callable[[Path], None]) -> bool:
    """Write a whole folder atomically: ``fill(tmp)`` fills a temp folder beside ``target``, which then replaces
    ``target`` by a rename (an existing ``target`` is moved aside and deleted first). Files go through
    ``rundir.atomic_write_bytes``; this is its form for folders (a tokenizer, a token cache).

    Returns False when another writer's folder took the place between the two renames (it is kept: the
    writers write the same thing). The temp folder never stays behind.
    """
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():  # a stale entry: move it aside, then delete it
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            with contextlib.suppress(OSError):
                os.replace(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():
                raise
            return False
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ option validators (errors name value and choices)
def check_choice(where: str, value: Any, choices: Sequence[Any], *, allow_none: bool = False) -> None:
    """Raise ValueError ``where=value is not valid; choose one of choices`` unless ``value`` is one of ``choices``."""
    if value is None and allow_none:
        return
    if value not in choices:
        raise ValueError(f"{where}={value!r} is not valid; choose one of {choices}{' or null' if allow_none else ''}")


def check_int(where: str, value: Any, low: int = 1, high: int | None = None, *, allow_none: bool = False) -> None:
    """Raise ValueError naming ``where=value`` unless it is an int (not a bool) in ``low..high`` (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        raise ValueError(f"{where}={value!r} must be {'null or ' if allow_none else ''}{bound}")


def check_range(where: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    """Raise ValueError naming ``where=value`` and the interval unless it is a number inside it (``low``/``high``:
    None = unbounded; ``*_open``: that end excluded), or None when allowed."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if low is not None and high is not None:
            bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            bound = f"{'>' if low_open else '>='} {low}"
        else:
            bound = f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{where}={value!r} must be {'null or ' if allow_none else ''}{bound}")


def options_from(cls: type, config: Mapping[str, Any] | None, where: str) -> Any:
    """Instantiate the options dataclass ``cls`` from a mapping; unknown keys raise naming the valid ones."""
    config = dict(config or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where} options; valid keys: {sorted(valid)}")
    return cls(**config)


# Built-in adapters, imported lazily so that heavy libraries load only for the paradigm in use.
PARADIGMS: dict[str, str] = {
    "vision": "tiedlab.paradigms.vision.adapter:VisionParadigm",
    "ssl": "tiedlab.paradigms.ssl.adapter:SSLParadigm",
    "graph": "tiedlab.paradigms.graph.adapter:GraphParadigm",
    "language": "tiedlab.paradigms.language.adapter:LanguageParadigm",
}


def get_paradigm(name: str) -> type[Paradigm]:
    """The adapter class registered as ``name``, or named by an import path ``"package.module:Class"``."""
    target = PARADIGMS.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown paradigm {name!r}; valid paradigms: {sorted(PARADIGMS)} "
                         "(or an import path 'package.module:Class')")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"paradigm {name!r} points at {target!r}, which cannot be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Paradigm)):
        raise ValueError(f"paradigm {name!r} points at {target!r}, which is not a Paradigm subclass")
    return cls


def paradigms_for_data(data: Mapping[str, Any]) -> list[str]:
    """The registered paradigms whose data options accept every key of ``data`` (to say which paradigm a
    dataset config belongs to when it was given to another). Imports the adapters: only for error messages."""
    owners = []
    for name in sorted(PARADIGMS):
        try:
            cls = get_paradigm(name)
        except ValueError:
            continue
        if set(data) <= {f.name for f in dataclasses.fields(cls.DataOptions)}:
            owners.append(name)
    return owners
