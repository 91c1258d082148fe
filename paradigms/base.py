"""The paradigm contract: what an adapter gives the engine, and the registry that finds adapters.

An adapter owns its data, the cell (the f(z, x, **ctx) the core block drives), the model around the
block (stem, head), the loss and the metrics. The engine owns everything else: optimiser, schedule,
evaluation cadence, checkpoints, timing, memory and tracking.

Adding a paradigm (see CONTRIBUTING.md for the whole recipe): subclass ``Paradigm``, add one line to
``PARADIGMS`` (or name it as ``"package.module:Class"`` in the config without touching tiedlab),
add ``configs/paradigm/<name>.yaml`` and a data file, and a test module that runs
``tiedlab.paradigms.contract.check_paradigm``.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn

from tiedlab.core import BlockSpec, BlockStats


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
        metrics: extra scalars to log (e.g. ``train/acc``).
    """

    loss: torch.Tensor
    stats: BlockStats | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Paradigm(ABC):
    """One learning paradigm, plugged into the shared engine.

    Class attributes:
        name: registry key.
        Options: dataclass of the paradigm's ``data`` and ``model`` config sections, so that a
            misspelt key is an error naming the valid ones.
        primary_metric: the quality key reports rank by (e.g. ``"acc"``), and whether higher is better.
    """

    name: ClassVar[str]
    DataOptions: ClassVar[type]
    ModelOptions: ClassVar[type]
    primary_metric: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True

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

    @abstractmethod
    def evaluate(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        """Quality on ``split`` ("val" or "test") in eval mode, as ``{f"{split}/acc": ..., f"{split}/loss": ...}``.

        Must include ``f"{split}/{primary_metric}"``."""

    def artifacts(self, run_dir: str) -> None:
        """Save what a run directory needs to be reloaded without the data root (e.g. a tokenizer)."""


def weights_key(module: nn.Module) -> tuple:
    """Identifies a module's current weights, for caching evaluation work between training steps: every
    parameter's and buffer's storage and in-place version counter. load_state_dict, in-place edits and the
    default optimisers bump the counter; fused optimisers and ``p.data`` writes do not, so a cache keyed on it
    must also be cleared when training steps."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


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


def iterate_forever(make: Callable[[torch.Generator], Iterable[Any]], seed: int) -> Iterator[tuple[int, int, Any]]:
    """(epoch, index in epoch, batch) over endless epochs, epoch e drawing from a generator seeded (seed, e)."""
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        for i, batch in enumerate(make(gen)):
            yield epoch, i, batch
        epoch += 1


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
