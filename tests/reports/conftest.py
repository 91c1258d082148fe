"""Synthetic run directories whose report is known in advance (written by hand, no training)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from tiedlab.paradigms import rundir

ABSENT = object()  # write_run(equilibrium=ABSENT): metrics.json has no "equilibrium" key (runs written before it)
AS_ENGINE = object()  # write_run's default: a completed DEQ run gets a check at equilibrium, other runs none


def eq_check(rel_residual: float | None = 1e-3, converged_fraction: float | None = 1.0,
                spectral_norm: float | None = 0.8, grad_cosine: float | None = 0.99) -> dict[str, Any]:
    """metrics.json's "equilibrium" value as the engine writes it, judged by the core's own
    ``equilibrium_flags`` at the default thresholds (nan is written as the string "nan", like the engine)."""
    from tiedlab.core.equilibrium import EquilibriumThresholds, equilibrium_flags

    thresholds = EquilibriumThresholds()
    measured = {"rel_residual": rel_residual, "converged_fraction": converged_fraction,
                "spectral_norm": spectral_norm, "grad_cosine": grad_cosine}
    flags = equilibrium_flags({k: v for k, v in measured.items() if v is not None}, thresholds)
    return {"at_equilibrium": not flags, "flags": flags,
            "measured": {k: "nan" if isinstance(v, float) and v != v else v for k, v in measured.items()},
            "thresholds": {k: getattr(thresholds, k) for k in measured}}


def write_run(root: Path, name: str, *, paradigm: str = "vision", dataset: str = "cifar10", mode: str = "tied",
              width: int = 32, depth: int = 4, seed: int = 0, val: float | None = 0.9, test: float | None = None,
              metric: str = "acc", status: str | None = "completed", reason: str = "", mask: dict | None = None,
              solver: str = "anderson", grad: str = "ift", jac: float = 0.0, train_s: float = 10.0,
              params: int | None = None, memory: float = 100.0, history: list[tuple[float, float]] | None = None,
              extra: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
              equilibrium: Any = AS_ENGINE, seed_batch: int | None = None) -> Path:
    """One run dir: config.yaml always; metrics.json unless ``status`` is None (with ``equilibrium`` as its
    "equilibrium" value unless ABSENT; by default a completed DEQ run gets ``eq_check()``, at equilibrium, as the
    engine writes one for every DEQ run; None writes null: not measured); history.jsonl from ``history``;
    ``seed_batch``: the provenance says it trained in a seed batch of that size (None: the provenance is silent)."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "paradigm": paradigm, "seed": seed, "resume": "auto", "run_dir": None, "data": {"name": dataset, **(data or {})},
        "model": {"width": width},
        "block": {"mode": mode, "depth": depth, "eval_depth": None, "norm": "none",
                  "jacobian_samples": 1 if jac else 0},
        "mask": {"mode": "none", "kind": "unstructured", "sparsity": 0.0, "n": 2, "m": 4, "seed": seed, **(mask or {})},
        "solver": {"name": solver, "max_iter": 30, "tol": 0.001},
        "grad": {"mode": grad, "steps": 5, "tau": 0.6},
        "optim": {"name": "adamw", "lr": 0.001},
        "train": {"batch_size": 128, "max_steps": 100, "jacobian_weight": jac, "progress": False, "device": "auto"},
        "logger": {"name": "local"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    key = f"val/{metric}"
    if history is None and val is not None:
        history = [(0.25 * train_s, 0.6 * val), (0.5 * train_s, 0.9 * val), (train_s, val)]
    lines = [{"step": 10 * (i + 1), "epoch": 0, "time/train_s": t, key: v, "train/loss": 1.0}
             for i, (t, v) in enumerate(history or [])]
    (run / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if status is None:
        return run
    unique = params if params is not None else width * width
    metrics: dict[str, Any] = {"params/unique": unique, "params/dense": unique * (1 if mode == "deq" else depth),
                               "params/nonzero": unique}
    if status in ("completed", "diverged"):
        metrics.update({"time/train_s": train_s, "time/step_ms": 10.0 * train_s, "throughput/samples_per_s": 1000.0,
                        "memory/peak_mb": memory, "core/nfe_forward": 20.0 if mode == "deq" else float(depth),
                        "core/nfe_backward": 15.0 if mode == "deq" else float(depth), "core/rel_residual": 1e-3})
    if status == "completed":
        metrics[key] = val
        metrics[f"test/{metric}"] = test if test is not None else val - 0.01
    if status == "diverged":
        metrics["core/rel_residual"] = "nan"  # stored as a string, like the engine does
    metrics.update(extra or {})
    if equilibrium is AS_ENGINE:
        equilibrium = eq_check() if mode == "deq" and status == "completed" else ABSENT
    top = {} if equilibrium is ABSENT else {"equilibrium": equilibrium}
    (run / "metrics.json").write_text(json.dumps({**top,
        "status": status, "reason": reason, "step": 100 if status == "completed" else 40, "total_steps": 100,
        "paradigm": paradigm, "dataset": dataset, "data": {"dataset": dataset}, "fingerprint": rundir.fingerprint(config), "fingerprint_version": rundir.FINGERPRINT_VERSION,
        "provenance": [{"commit": "abc1234", "dirty": False, "host": "testhost", "started": "2026-01-01T00:00:00+00:00",
                        **({} if seed_batch is None else {"seed_batch": seed_batch})}],
        "metrics": metrics}))
    return run


def cell(root: Path, prefix: str, values: list[float], **kw: Any) -> list[Path]:
    """One run per value, seeds 0, 1, ..."""
    return [write_run(root, f"{prefix}-s{i}", seed=i, val=v, **kw) for i, v in enumerate(values)]


def build_synthetic(root: Path) -> None:
    """The scenario the synthetic tests check (expected numbers in test_report_synthetic.py)."""
    v = root / "vision"
    # Tied over depth at width 32: gains 0.10 (2->4) then 0.005 (8->16): depth saturates.
    cell(v, "tied-d2", [0.79, 0.80, 0.81], depth=2)
    cell(v, "tied-d4", [0.89, 0.90, 0.91], depth=4)
    cell(v, "tied-d8", [0.93, 0.94, 0.95], depth=8)
    cell(v, "tied-d16", [0.935, 0.945, 0.955], depth=16)
    write_run(v, "tied-d8-s3", depth=8, seed=3, val=None, status="running", history=[])  # still running
    # Width 64 at depth 4 beats width 32 at depth 8 (0.97 vs 0.94).
    cell(v, "tied-w64-d4", [0.96, 0.97, 0.98], width=64, depth=4)
    write_run(v, "tied-w128-d4-s0", width=128, depth=4, val=None, status=None)  # no metrics.json yet
    # Masks at width 32, depth 4: distinct 0.93 > shared 0.85, and > no mask (tied-d4, 0.90).
    cell(v, "distinct", [0.92, 0.93, 0.94], mask={"mode": "distinct", "sparsity": 0.5})
    cell(v, "shared", [0.84, 0.85, 0.86], mask={"mode": "shared", "sparsity": 0.5})
    cell(v, "shared-nm", [0.83, 0.84, 0.85], mask={"mode": "shared", "kind": "nm", "sparsity": 0.0})
    # DEQ at width 32: slower (40 s vs 10 s), lower (0.80), one diverged seed.
    cell(v, "deq", [0.79, 0.80, 0.81], mode="deq", train_s=40.0, memory=60.0)
    write_run(v, "deq-s3", mode="deq", seed=3, val=None, status="diverged", train_s=12.0,
              reason="non-finite loss (nan) at step 41", history=[(6.0, 0.5), (12.0, 0.55)])
    cell(v, "deq-broyden", [0.77, 0.78, 0.79], mode="deq", solver="broyden", grad="phantom", train_s=40.0)
    write_run(v, "deq-jac-s0", mode="deq", val=0.79, jac=0.1, train_s=40.0)
    # Graph: DEQ beats tied -> insight 1 fails ...
    g = root / "graph"
    cell(g, "tied", [0.69, 0.70, 0.71], paradigm="graph", dataset="cora", width=16)
    # ... and its seeds spread 5x wider (std 0.05 vs 0.01) -> insight 3 holds on spread.
    cell(g, "deq", [0.80, 0.85, 0.90], paradigm="graph", dataset="cora", width=16, mode="deq")
    # SSL: one seed per side -> inconclusive (n<2).
    s = root / "ssl"
    cell(s, "tied", [0.5], paradigm="ssl", dataset="cifar10", metric="knn_acc", width=8)
    cell(s, "deq", [0.4], paradigm="ssl", dataset="cifar10", metric="knn_acc", width=8, mode="deq")
    # Language: loss, lower is better; tied 1.5 < DEQ 1.8 -> insight 1 holds.
    lang = root / "language"
    cell(lang, "tied", [1.49, 1.50, 1.51], paradigm="language", dataset="tinyshakespeare", metric="loss", width=64,
         history=[(1.0, 3.0), (5.0, 1.6), (10.0, 1.5)])
    cell(lang, "deq", [1.79, 1.80, 1.81], paradigm="language", dataset="tinyshakespeare", metric="loss", width=64,
         mode="deq", history=[(4.0, 3.0), (20.0, 2.0), (40.0, 1.8)])


TOY = "support.toy:ToyParadigm"  # the test-only paradigm (tests/support/toy.py): real training, ~0.1-3 s a run


def toy_cfg(mode: str, seed: int, width: int = 16) -> dict:
    return dict(paradigm=TOY, seed=seed, data={}, model={"width": width}, block={"mode": mode, "depth": 3},
                train=dict(batch_size=64, epochs=None, max_steps=10, eval_every=5, ckpt_every=100, progress=False,
                           threads=1), optim=dict(lr=0.01))


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real tiny runs of the toy paradigm (engine.train), trained once per session: explicit, tied and DEQ at
    width 16, seeds 0 and 1, under RUNS/multirun/toy/block=MODE,seed=SEED. Read them, never write into them."""
    from tiedlab.paradigms.engine import train

    runs = tmp_path_factory.mktemp("real_runs")
    for mode in ("explicit", "tied", "deq"):
        for seed in (0, 1):
            result = train(toy_cfg(mode, seed), runs / "multirun" / "toy" / f"block={mode},seed={seed}")
            assert result["status"] == "completed"
    return runs


@pytest.fixture(scope="session")
def synthetic_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    build_synthetic(root)
    return root


@pytest.fixture(scope="session")
def synthetic_report(synthetic_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, int]:
    """(report folder, summary.json, exit code) of ``tiedlab-report`` over the synthetic runs."""
    from tiedlab.reports.cli import main

    out = tmp_path_factory.mktemp("report") / "synthetic"
    code = main([str(synthetic_runs), "--out", str(out), "--title", "synthetic", "--command", "make runs",
                 "--command", "tiedlab-study demo"])
    return out, json.loads((out / "summary.json").read_text()), code


class _TagChecker(HTMLParser):
    """Balanced table tags and the img sources of an HTML page."""

    TRACKED = {"html", "head", "body", "table", "thead", "tbody", "tr", "td", "th", "ul", "li", "figure", "p", "nav",
               "main", "details", "summary", "div", "script", "style"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []  # each <img>'s file (data-file; its src when not embedded)
        self.sources: list[str] = []  # each <img>'s src
        self.links: list[str] = []  # every <a href>
        self.ids: list[str] = []
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        found = dict(attrs)
        if tag == "img":
            self.sources.append(found.get("src") or "")
            self.images.append(found.get("data-file") or found.get("src") or "")
        if tag == "a":
            self.links.append(found.get("href") or "")
        if found.get("id"):
            self.ids.append(found["id"] or "")
        if tag in self.TRACKED:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.TRACKED:
            if not self.stack or self.stack[-1] != tag:
                self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            else:
                self.stack.pop()


@pytest.fixture
def check_html():
    """check_html(folder) -> the parser: asserts balanced tags, that every <img> is its PNG embedded (index.html
    stands alone) and exists in ``folder`` too, that every local link (SVGs, the table of contents) resolves."""

    def check(folder: Path) -> _TagChecker:
        import base64

        parser = _TagChecker()
        parser.feed((folder / "index.html").read_text())
        parser.close()
        assert not parser.errors, parser.errors[:5]
        assert not parser.stack, f"unclosed tags: {parser.stack}"
        for src, file in zip(parser.sources, parser.images):
            assert src.startswith("data:image/png;base64,"), f"<img> of {file} is not embedded: {src[:60]}"
            assert base64.b64decode(src.split(",", 1)[1]) == (folder / file).read_bytes(), file
        for href in parser.links:
            assert href and not href.startswith(("http:", "https:", "/")), href
            if href.startswith("#"):
                assert href[1:] in parser.ids, f"<a href={href!r}>: no such id"
            else:
                assert (folder / href).is_file(), f"<a href={href!r}> does not exist"
        return parser

    return check
