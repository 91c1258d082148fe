"""A test-only paradigm, written by the CONTRIBUTING recipe: digits classification with an MLP cell.

It lives outside the registry and is named by import path (``paradigm: support.toy:ToyParadigm``)
with its configs in ``tests/support/configs`` (added with ``hydra.searchpath``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tiedlab.core import Block, BlockSpec
from tiedlab.paradigms.base import DataBundle, Paradigm, StepOutput


@dataclass
class ToyData:
    name: str = "digits"
    limit: int | None = None
    nan_input_after: int | None = None  # test hook: poison the inputs after this many training steps
    fail_after: int | None = None  # test hook: raise a RuntimeError after this many training steps
    eval_draws_rng: bool = False  # test hook: scoring draws from the global generator, as a DataLoader's iterator does
    sigterm_on_test: bool = False  # test hook: scoring the test split (the final evaluation) sends this process SIGTERM
    val_batch: int | None = None  # test hook: score the splits in batches of this many samples (one batch: None)
    nan_val_from: int | None = None  # test hook: poison the validation inputs from this index on
    step_sleep_s: float = 0.0  # test hook: every training step takes this much longer (a stop waits for the step)


@dataclass
class ToyModel:
    width: int = 32
    activation: str = "tanh"  # or "identity": a linear cell, expansive when scale > 1
    scale: float | None = None  # spectral norm of the cell's weight at initialisation (None: PyTorch default)


class MLPCell(nn.Module):
    """z' = tanh(W z + x): the injected x is the stem's projection of the image."""

    def __init__(self, width: int, activation: str = "tanh", scale: float | None = None):
        super().__init__()
        if activation not in ("tanh", "identity"):
            raise ValueError(f"activation={activation!r} is not valid; choose one of ('tanh', 'identity')")
        self.lin = nn.Linear(width, width)
        self.act = torch.tanh if activation == "tanh" else (lambda v: v)
        if scale is not None:
            with torch.no_grad():
                self.lin.weight.mul_(scale / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(z) + x)


class ToyNet(nn.Module):
    def __init__(self, block: Block, width: int):
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.block = block
        self.head = nn.Linear(width, 10)

    def forward(self, images: torch.Tensor):
        z, stats = self.block(self.stem(images))
        return self.head(z), stats


class ToyParadigm(Paradigm):
    name = "toy"
    DataOptions = ToyData
    ModelOptions = ToyModel
    data_parallel = True  # (images, labels), mean cross-entropy
    seed_batch = True

    def build_data(self) -> DataBundle:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32) / 16.0
        y = torch.tensor(y)
        if self.data_opts.limit:
            x, y = x[: self.data_opts.limit], y[: self.data_opts.limit]
        n = len(x)
        self.splits = {"train": (x[: n - 400], y[: n - 400]), "val": (x[n - 400: n - 200], y[n - 400: n - 200]),
                       "test": (x[n - 200:], y[n - 200:])}
        train_x, train_y = self.splits["train"]
        bs = self.batch_size

        def batches(gen: torch.Generator):
            order = torch.randperm(len(train_x), generator=gen)
            for i in range(0, len(order) - bs + 1, bs):
                idx = order[i: i + bs]
                yield train_x[idx], train_y[idx]

        return DataBundle(batches, steps_per_epoch=len(train_x) // bs, samples_per_step=bs,
                          meta={"dataset": "scikit-learn digits", "train": len(train_x)})

    def cell(self, data: DataBundle) -> nn.Module:
        return MLPCell(self.model_opts.width, self.model_opts.activation, self.model_opts.scale)

    def build_model(self, data: DataBundle, spec: BlockSpec) -> nn.Module:
        return ToyNet(Block(lambda: self.cell(data), spec), self.model_opts.width)

    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = batch
        self.steps = getattr(self, "steps", 0) + 1
        if self.data_opts.fail_after is not None and self.steps > self.data_opts.fail_after:
            raise RuntimeError(f"planted failure after {self.data_opts.fail_after} steps")
        if self.data_opts.nan_input_after is not None and self.steps > self.data_opts.nan_input_after:
            x = x * float("nan")
        if self.data_opts.step_sleep_s:
            import time

            time.sleep(self.data_opts.step_sleep_s)
        logits, stats = model(x)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, stats, {"train/acc": (logits.argmax(1) == y).float().mean()})

    def score(self, model: nn.Module, data: DataBundle, split: str) -> dict[str, float]:
        x, y = self.splits[split]
        if self.data_opts.sigterm_on_test and split == "test":
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        if self.data_opts.eval_draws_rng:
            torch.empty((), dtype=torch.int64).random_()
        if split == "val" and self.data_opts.nan_val_from is not None:
            x = x.clone()
            x[self.data_opts.nan_val_from:] = float("nan")
        size = self.data_opts.val_batch or len(x)
        logits = torch.cat([model(x[i:i + size])[0] for i in range(0, len(x), size)])
        return {f"{split}/acc": (logits.argmax(1) == y).float().mean().item(),
                f"{split}/loss": F.cross_entropy(logits, y).item()}


def with_changes(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of a plain config dict with dotted keys changed: ``with_changes(BASE, **{"optim.lr": 0.1})``."""
    import json

    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        node = out
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out
