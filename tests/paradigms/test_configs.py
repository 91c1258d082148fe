"""Every shipped config composes, validates and instantiates: paradigms, data, sizes, experiments, studies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import tiedlab.paradigms.cli  # noqa: F401  (registers the structured schema)
from tiedlab.paradigms.base import get_paradigm, options_from
from tiedlab.paradigms.config import validate
from tiedlab.paradigms.engine import as_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_ctx():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="tiedlab.configs", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def instantiate(overrides: list[str]):
    cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
    run = as_config(OmegaConf.to_container(cfg, resolve=False) | {"run_dir": "unused"})
    spec = validate(run)
    cls = get_paradigm(run.paradigm)
    options_from(cls.DataOptions, run.data, f"{cls.name} data")
    options_from(cls.ModelOptions, run.model, f"{cls.name} model")
    return run, spec, cfg


def paradigm_of(data_file: str) -> str | None:
    """The first paradigm whose DataOptions take every key of a data file (data files are per paradigm)."""
    import dataclasses

    keys = set(yaml.safe_load((CONFIGS / "data" / f"{data_file}.yaml").read_text()) or {})
    for paradigm in names("paradigm"):
        if keys <= {f.name for f in dataclasses.fields(get_paradigm(paradigm).DataOptions)}:
            return paradigm
    return None


def test_default_config_is_a_tied_vision_run(hydra_ctx):
    run, spec, _ = instantiate([])
    assert run.paradigm == "vision" and spec.mode == "tied"


@pytest.mark.parametrize("paradigm", names("paradigm"))
@pytest.mark.parametrize("block", names("block"))
def test_every_paradigm_composes_with_every_block(hydra_ctx, paradigm, block):
    run, spec, _ = instantiate([f"paradigm={paradigm}", f"block={block}"])
    assert spec.mode == block


@pytest.mark.parametrize("group", ["mask", "solver", "grad", "optim", "logger"])
def test_every_group_option_composes(hydra_ctx, group):
    for option in names(group):
        instantiate([f"{group}={option}", "block=deq"])


@pytest.mark.parametrize("paradigm", names("paradigm"))
def test_the_optim_group_picks_the_optimiser_in_every_paradigm(hydra_ctx, paradigm):
    """optim=sgd must give SGD: a paradigm file that also set optim.name would silently rename it back."""
    for option in names("optim"):
        run, _, _ = instantiate([f"paradigm={paradigm}", f"optim={option}"])
        assert run.optim.name == option, (paradigm, option, run.optim.name)


@pytest.mark.parametrize("size", names("size"))
def test_every_size_file_composes_with_its_paradigm(hydra_ctx, size):
    paradigm = size.split("_")[0]
    assert paradigm in names("paradigm"), f"size {size} names no paradigm"
    instantiate([f"paradigm={paradigm}", f"size={size}"])


@pytest.mark.parametrize("data", names("data"))
def test_every_data_file_fits_a_paradigm(hydra_ctx, data):
    paradigm = paradigm_of(data)
    assert paradigm is not None, f"data file {data}.yaml fits no paradigm's DataOptions"
    instantiate([f"paradigm={paradigm}", f"data={data}"])


@pytest.mark.parametrize("experiment", names("experiment"))
def test_every_experiment_composes_and_every_swept_value_instantiates(hydra_ctx, experiment):
    text = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text()
    assert text.lstrip().startswith("# @package _global_")
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert len(comment) > 60, f"{experiment}: say in a comment what question it answers"
    paradigm = experiment.split("_")[0]
    overrides = [f"paradigm={paradigm}", f"experiment={experiment}"]
    _, _, cfg = instantiate(overrides)
    params = (yaml.safe_load(text).get("hydra", {}) or {}).get("sweeper", {}).get("params", {}) or {}
    assert params, f"{experiment}: an experiment sweeps something (hydra.sweeper.params)"
    for key, values in params.items():
        for value in str(values).split(","):
            instantiate([*overrides, f"{key}={value.strip()}"])


# What a block's arm may set apart from the other arms: the block itself, its solver and backward mode (inert outside a
# DEQ) and the DEQ recipe's training of the block (penalty, warm-up). Anything else (model.*, data.*, the optimiser,
# the loop) would make a comparison of block modes compare something more than the block.
BLOCK_SPECIFIC = ("block.", "solver.", "grad.", "train.jacobian_weight", "train.deq_warmup_steps",
                  "train.deq_warmup_depth")


def flat_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: leaf value}."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat_keys(value, f"{prefix}{key}."))
    return out


def arm_differences(overrides: list[str], blocks: list[str]) -> dict[str, dict[str, Any]]:
    """The config keys outside ``BLOCK_SPECIFIC`` whose values differ between the ``block=`` arms of ``overrides``."""
    arms = {b: flat_keys(OmegaConf.to_container(compose(config_name="train", overrides=[*overrides, f"block={b}"]),
                                                resolve=False)) for b in blocks}
    keys = set().union(*arms.values())
    return {k: {b: arm.get(k, "<absent>") for b, arm in arms.items()} for k in sorted(keys)
            if not k.startswith(BLOCK_SPECIFIC) and len({repr(arm.get(k, "<absent>")) for arm in arms.values()}) > 1}


def block_arms() -> list[tuple[str, list[str], list[str]]]:
    """(name, overrides, blocks) of every experiment and study grid that sweeps the block."""
    from tiedlab.paradigms.study import load_study

    found = []
    for experiment in names("experiment"):
        text = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text()
        params = (yaml.safe_load(text).get("hydra", {}) or {}).get("sweeper", {}).get("params", {}) or {}
        blocks = [b.strip() for b in str(params.get("block", "")).split(",") if b.strip()]
        if len(blocks) > 1:
            found.append((f"experiment={experiment}",
                          [f"paradigm={experiment.split('_')[0]}", f"experiment={experiment}"], blocks))
    for study in names("study"):
        for grid in load_study(study)["grids"]:
            blocks = [str(b) for b in (grid.get("sweep") or {}).get("block", [])]
            if len(blocks) > 1:
                found.append((f"study {study} grid {grid['name']}", list(grid["overrides"]), blocks))
    return found


def test_block_arms_differ_in_the_block_alone(hydra_ctx):
    """Every experiment and study grid that sweeps the block composes arms that differ only in the block and its
    DEQ recipe's block training (BLOCK_SPECIFIC): a recipe that also sets a model option (language's
    model.inject_norm) must be set on every arm, or the DEQ arm trains another model."""
    found = block_arms()
    assert any(name == "experiment=language_tied_vs_deq" for name, _, _ in found)  # the sweep is read
    differing = {name: diff for name, overrides, blocks in found if (diff := arm_differences(overrides, blocks))}
    assert differing == {}


@pytest.mark.parametrize("experiment", names("experiment"))
def test_an_experiment_keeps_its_deq_recipes_settings(experiment):
    """An experiment file is loaded after the recipe: a key both set (language_tied_vs_deq's solver.eval_max_iter 24
    against the recipe's 30) would silently train or evaluate the DEQ away from the recipe that was measured."""
    recipe = CONFIGS / "recipe" / "deq" / f"{experiment.split('_')[0]}.yaml"
    if not recipe.exists():
        pytest.skip(f"no DEQ recipe for {experiment}")
    body = {k: v for k, v in yaml.safe_load((CONFIGS / "experiment" / f"{experiment}.yaml").read_text()).items()
            if k not in ("defaults", "hydra")}
    ours, theirs = flat_keys(body), flat_keys(yaml.safe_load(recipe.read_text()))
    assert {k: (ours[k], theirs[k]) for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]} == {}


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm"])
def test_launcher_configs_compose(hydra_ctx, launcher):
    cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "launcher" in cfg.hydra and cfg.hydra.launcher._target_


@pytest.mark.parametrize("study", names("study"))
def test_every_study_grid_composes_with_every_swept_value(hydra_ctx, study):
    from tiedlab.paradigms.study import load_study

    spec = load_study(study)
    assert spec["question"] and spec["grids"]
    composed: set[tuple[str, ...]] = set()  # grids that share their overrides share these compositions

    def compose_once(overrides: list[str]) -> None:
        if tuple(overrides) not in composed:
            composed.add(tuple(overrides))
            instantiate(overrides)

    for grid in spec["grids"]:
        overrides = [o for o in grid["overrides"]]
        compose_once(overrides)
        for key, values in (grid.get("sweep") or {}).items():
            if key == "seed":  # any integer composes alike: the grid's own overrides were composed above
                continue
            for value in values:
                compose_once([*overrides, f"{key}={value}"])


def test_study_runner_dry_run_and_unknown_name(capsys, tmp_path):
    from tiedlab.paradigms.study import study

    assert study(["demo", "--dry-run", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("tiedlab.paradigms.cli -m") == len(__import__("tiedlab.paradigms.study", fromlist=["x"]).load_study("demo")["grids"])
    assert f"hydra.sweep.dir={tmp_path}/vision" in out and "block=explicit,tied,deq" in out
    with pytest.raises(ValueError, match=r"unknown study 'nope'; valid studies: \[.*'demo'"):
        study(["nope"])


def test_study_runner_runs_only_the_selected_grids(capsys, tmp_path):
    from tiedlab.paradigms.study import load_study, study

    assert study(["quick", "--dry-run", "--runs", str(tmp_path), "--grids", "graph_*,vision_masks"]) == 0
    out = capsys.readouterr().out
    ran = [line.split("hydra.sweep.dir=")[1].split()[0] for line in out.splitlines() if line.startswith("+ ")]
    expected = [g["name"] for g in load_study("quick")["grids"] if g["name"].startswith("graph_") or g["name"] == "vision_masks"]
    assert [Path(r).name for r in ran] == expected and len(expected) == 9
    with pytest.raises(ValueError, match=r"--grids pattern 'grahp_\*' matches no grid of study 'quick'; valid grids: \["):
        study(["quick", "--dry-run", "--grids", "grahp_*"])


def test_study_run_dirs_keep_swept_keys_that_are_also_fixed(tmp_path):
    """A grid that fixes model.width in its anchor (as the shipped studies' anchors do) and sweeps it: the sweep wins
    (last override) and the run directory must be named after it, or the two widths of a seed would share (and
    refuse) one directory."""
    from tiedlab.paradigms.study import load_study, study_commands

    anchor = next(g for g in load_study("quick")["grids"] if g["name"] == "vision_base")["overrides"]
    assert "model.width=24" in anchor
    grids = [{"name": "vision_width", "overrides": anchor, "sweep": {"model.width": [12, 48], "seed": [0, 1]}},
             {"name": "vision_depth", "overrides": [*anchor, "block.depth=2"], "sweep": {"block.depth": [2, 8]}}]
    for grid, cmd in zip(grids, study_commands({"grids": grids}, tmp_path, [], 1)):
        excluded = next(a for a in cmd if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
        hidden = excluded.split("=", 1)[1].strip("[]").split(",")
        for key in grid["sweep"]:
            assert key not in hidden, (grid["name"], key)
            fixed_values = [a for a in cmd if a.startswith(f"{key}=")]
            assert fixed_values[-1].split("=", 1)[1] == ",".join(map(str, grid["sweep"][key])), (grid["name"], key)


def test_study_grid_runs_into_one_directory_per_swept_value(tmp_path):
    """A grid's runs land in RUNS/<grid>/<swept key=value,...> (the real runner command, toy paradigm)."""
    import os
    import subprocess

    from tiedlab.paradigms.study import study_commands

    tests = Path(__file__).resolve().parents[1]
    grid = {"name": "toy_grid", "sweep": {"block": ["explicit", "tied"], "seed": [0, 1]},
            "overrides": ["paradigm=toy", f"hydra.searchpath=[file://{tests / 'support' / 'configs'}]",
                          "train.max_steps=3", "train.eval_every=3", "train.threads=1", "model.width=8"]}
    (cmd,) = study_commands({"grids": [grid]}, tmp_path, [], 1)
    env = {**os.environ, "PYTHONPATH": str(tests), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("metrics.json"))
    assert runs == [f"toy_grid/block={b},seed={s}" for b in ("explicit", "tied") for s in (0, 1)]
    for run in runs:
        assert json.loads((tmp_path / run / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("variant,grad", [("ift_jacobian", "ift"), ("phantom", "phantom"), ("jfb", "onestep")])
@pytest.mark.parametrize("paradigm", ["vision", "graph", "language", "ssl"])
def test_deq_variants_select_their_gradient_and_the_paradigms_recipe_follows(hydra_ctx, variant, grad, paradigm):
    """deq=<variant> picks the block, solver and backward mode; the paradigm's recipe (loaded after it) adds its
    settings: the penalty weight and warm-up of vision, language (its unit-scale injection too) and SSL, none for
    graph (no recipe file)."""
    cfg = compose(config_name="train", overrides=[f"paradigm={paradigm}", f"deq={variant}"])
    assert (cfg.block.mode, cfg.grad.mode) == ("deq", grad)
    if variant == "phantom":
        assert cfg.grad.steps == 5
    if paradigm == "vision":
        assert (cfg.train.jacobian_weight, cfg.block.jacobian_samples, cfg.train.deq_warmup_steps) == (2.0, 1, 50)
    elif paradigm == "language":
        assert (cfg.train.jacobian_weight, cfg.block.jacobian_samples, cfg.train.deq_warmup_steps) == (1.0, 1, 100)
        assert cfg.model.inject_norm is True and cfg.solver.eval_max_iter == 30
    elif paradigm == "ssl":
        assert (cfg.train.jacobian_weight, cfg.block.jacobian_samples, cfg.train.deq_warmup_steps) == (6.0, 1, 50)
    else:
        assert cfg.train.deq_warmup_steps == 0
        assert cfg.train.jacobian_weight == (1.0 if variant == "ift_jacobian" else 0.0)
    instantiate([f"paradigm={paradigm}", f"deq={variant}"])


def test_a_recipe_never_replaces_what_the_command_line_chose(hydra_ctx):
    """Recipes set budgets and penalties, never the solver or the backward mode (configs/recipe/README.md)."""
    for path in (CONFIGS / "recipe").rglob("*.yaml"):
        node = OmegaConf.load(path)
        assert "name" not in (node.get("solver") or {}) and "mode" not in (node.get("grad") or {}), path
        assert "options" not in (node.get("solver") or {}), path
    cfg = compose(config_name="train", overrides=["paradigm=vision", "block=deq", "solver=broyden", "grad=phantom"])
    assert (cfg.solver.name, cfg.grad.mode, cfg.train.jacobian_weight) == ("broyden", "phantom", 2.0)


def test_optional_grids_run_only_when_selected_and_are_never_a_primary_arm(capsys, tmp_path, monkeypatch):
    """paper's SSL grids and its phantom vision DEQ are optional: the default run and plan leave them out, --grids
    runs them, and a study that registers a comparison on an optional grid is refused."""
    import yaml

    from tiedlab.paradigms import study as study_module

    def ran(argv):
        assert study_module.study(["paper", "--dry-run", "--runs", str(tmp_path), *argv]) == 0
        out = capsys.readouterr().out
        return [Path(line.split("hydra.sweep.dir=")[1].split()[0]).name for line in out.splitlines()
                if line.startswith("+ ")]

    spec = study_module.load_study("paper")
    optional = study_module.optional_grids(spec)
    assert set(optional) == {"vision_deq_phantom", "ssl_base", "ssl_masks", "ssl_dense_half", "ssl_depth",
                             "ssl_width"}
    assert ran([]) == [g["name"] for g in spec["grids"] if g["name"] not in optional]
    assert ran(["--grids", "ssl_*"]) == ["ssl_base", "ssl_masks", "ssl_dense_half", "ssl_depth", "ssl_width"]
    assert study_module.study(["paper", "--plan", "--runs", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "ssl_base" not in printed.split("optional grids")[0]
    assert "optional grids, not in this plan (select them with --grids): vision_deq_phantom, ssl_base" in printed
    # a plan of some grids prices the comparisons that read only those
    assert study_module.study(["paper", "--plan", "--runs", str(tmp_path), "--grids", "graph_*"]) == 0
    printed = capsys.readouterr().out
    assert "matched/graph" in printed and "/vision" not in printed and "/language" not in printed

    studies = tmp_path / "studies"
    studies.mkdir()
    monkeypatch.setattr(study_module, "study_dir", lambda: studies)
    toy = {"name": "toy", "grids": [{"name": "g", "overrides": ["paradigm=vision"], "sweep": {"seed": [0]}},
                                    {"name": "h", "optional": True, "overrides": ["paradigm=vision"]}],
           "primary": {"comparisons": [{"insight": 1, "paradigm": "vision", "claim": "superiority",
                                        "metric": "val/acc", "a": {"grid": "g"}, "b": {"grid": "h"}}]}}
    (studies / "toy.yaml").write_text(yaml.safe_dump(toy))
    with pytest.raises(ValueError, match=r"optional grid\(s\) \['h'\] of .*toy.yaml are read by a primary comparison"):
        study_module.load_study("toy")
    toy["grids"][1]["optional"] = "yes"
    (studies / "toy.yaml").write_text(yaml.safe_dump(toy))
    with pytest.raises(ValueError, match=r"grid 'h' of .*: optional='yes' must be true or false"):
        study_module.load_study("toy")
