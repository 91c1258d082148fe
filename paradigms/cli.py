"""Console commands: one Hydra app with the paradigm preselected, and the study runner's entry point
(the runner itself is ``tiedlab.paradigms.study``).

    tiedlab-vision  [overrides]    = tiedlab-train paradigm=vision [overrides]
    tiedlab-ssl / tiedlab-graph / tiedlab-language
    tiedlab-train -m experiment=vision_depth       (a multirun grid; hydra/launcher=local_parallel for joblib)
    tiedlab-study NAME [--dry-run] [--jobs N] [--grids 'graph_*,vision_masks'] [extra overrides]
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from . import console
from .config import TrainConfig

from .rundir import CHECKPOINT, RunLog, short_dirname

CONFIG_PATH = "pkg://tiedlab.configs"
ConfigStore.instance().store(name="train_schema", node=TrainConfig)
if not OmegaConf.has_resolver("tiedlab_dirname"):  # run directory names within file-system limits
    OmegaConf.register_new_resolver("tiedlab_dirname", short_dirname)
from .launch import INTERRUPTED_EXIT  # a run stopped by SIGUSR2/SIGTERM after a checkpoint: resumable
TRACEBACK_ENV = "TIEDLAB_TRACEBACK"  # set to 1 to see the full traceback of a reported error
CTRL_C_EXIT = 128 + signal.SIGINT  # a command stopped by Ctrl-C (its run checkpointed first, unless pressed twice)


def compose_config(overrides: list[str]) -> DictConfig:
    """The run config the command line builds from ``overrides``, without starting a Hydra app (Hydra's compose
    API; set ``run_dir`` among the overrides: the default one names Hydra's output folder)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    outer = get_gh_backup()  # a Hydra context this process holds already (a caller's compose): set aside, restored
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="tiedlab.configs", version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        restore_gh_from_backup(outer)


class RunError(Exception):
    """A run that could not start (a bad config, data or run directory) or that failed; its one-line message
    was already printed when it was raised."""


def _report(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_LOG: list[RunLog] = []  # the command log of the job in progress: it gets the console's notes


def _console_closed(reason: str) -> None:
    """A line in the run's cli.log when nothing more reaches the console (written directly, not through logging:
    this is called from inside a write, which may be a logging handler's)."""
    if _LOG:
        _LOG[0].note(f"[tiedlab] {reason}: what this process writes there is dropped (the run's metrics.json and "
                     "this log record it)")


def _terminal_stops(hydra_cfg: Any) -> bool:
    """Whether Ctrl-C and a hang-up stop this process's run with a checkpoint: in a run or a multirun of one process.
    Not in joblib's workers (their parent's Ctrl-C ends the workers anyway) nor under torchrun (its agent passes the
    terminal's Ctrl-C on as a second one): there Ctrl-C ends the run where it is, as before."""
    return _one_process(hydra_cfg) and "RANK" not in os.environ


def _hydra_record(cfg: DictConfig, hydra_cfg: Any) -> dict[str, str]:
    """Hydra's record of the command (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``, as Hydra writes
    them), for the engine to write once the run directory is this process's: Hydra's own writer is off
    (``hydra.output_subdir: null`` in train.yaml) because it wrote before the lock was tried, so a command refused by
    another's run rewrote that run's record."""
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg),
            ".hydra/hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}


def _one_process(hydra_cfg: Any) -> bool:
    """A single run, or a multirun whose jobs run one after another in this process (Hydra's basic launcher)."""
    from hydra.types import RunMode

    return hydra_cfg.mode == RunMode.RUN or hydra_cfg.launcher.get("_target_") == BASIC_LAUNCHER


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): the other ranks print only their own errors."""
    return int(os.environ.get("RANK") or 0)


def _show_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
_FAILED: list[str] = []  # the runs of this process's multirun that failed so far


def _stop_here(hydra_cfg: Any, signal_name: str) -> None:
    """After a run that a stop signal interrupted (or that got one during its final evaluation): this process
    was asked to stop, so it starts no further run. It exits 75 (resumable; 130 after Ctrl-C), or 1 if a run of
    its multirun failed. Launchers that train each run in a process of its own (joblib, Slurm) signalled that
    process alone: their multirun goes on, and the run ends as a RunError like a failed one."""
    if _one_process(hydra_cfg):
        _leave(1 if _FAILED else CTRL_C_EXIT if signal_name == "SIGINT" else INTERRUPTED_EXIT)


def _leave(code: int) -> None:
    """Exit with ``code`` after a stop (a SystemExit passes Hydra's job runner, which catches Exception); a Ctrl-C
    while the interpreter shuts down (the run is already recorded) exits at once, without a traceback (set at exit:
    a program that called this CLI in-process and caught the SystemExit keeps its Ctrl-C)."""

    def quiet_ctrl_c() -> None:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, lambda signum, frame: os._exit(code))

    atexit.register(quiet_ctrl_c)  # the last registered runs first, before the libraries' exit handlers
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    log = RunLog()  # the run's cli.log, opened by the engine once the run directory is this process's
    _LOG[:] = [log]
    try:
        return _job(cfg, hydra_cfg, log)
    finally:
        _LOG[:] = []
        log.close()


def _job(cfg: DictConfig, hydra_cfg: Any, log: RunLog) -> Any:
    """One job of the Hydra app (see ``_hydra_main``); its lines in the run's log go through ``log``."""
    from hydra.types import RunMode

    from .base import get_paradigm
    from .distributed import SameOnEveryRank
    from .engine import train as run_training
    from .tracking import TrackerError

    def say(line: str) -> None:  # on the console, and in the run's log where the run directory was this process's
        _report(line)
        log.note(line)

    result: dict[str, Any] = {}
    console.guard(_console_closed)  # in a launcher's worker process (joblib) too
    if console.closed():  # an earlier run of this multirun found the reader gone: this run's log says so too
        _console_closed(f"the console closed before this run ({'; '.join(console.closed())})")
    try:
        result = run_training(cfg, cfg.run_dir, list(hydra_cfg.overrides.task),
                              terminal_stops=_terminal_stops(hydra_cfg), record=_hydra_record(cfg, hydra_cfg),
                              log=log)
    except KeyboardInterrupt:  # Ctrl-C twice, or after another stop signal: the run stopped where it was
        if _show_traceback():
            raise
        again = ("resumes from its last checkpoint" if (Path(str(cfg.run_dir)) / CHECKPOINT).is_file()
                 else "starts again (it had no checkpoint yet)")
        say(f"[tiedlab] stopped by Ctrl-C: {cfg.run_dir} was not checkpointed now; rerunning the same command {again}")
        _leave(CTRL_C_EXIT)
    except (ValueError, OSError, TrackerError) as err:  # config, data, checkpoint, run-directory, tracker errors
        if _show_traceback():
            raise
        message = f"[tiedlab] error: {err}"
        if _rank() and isinstance(err, SameOnEveryRank):
            message = ""  # rank 0 prints it
    except Exception as err:  # noqa: BLE001 - a crash while building the run: one line, the trace on request
        if _show_traceback():
            raise
        message = f"[tiedlab] error: {type(err).__name__} while setting up the run: {err} ({TRACEBACK_ENV}=1 shows where)"
    else:
        cls = get_paradigm(cfg.paradigm)
        metric = result.get("metrics", {}).get(f"val/{cls.primary_metric}")
        if _rank() and result["status"] != "failed":  # rank 0 reports the run; the others only their own failure
            if result["status"] == "interrupted" or result.get("stopped_by"):
                _stop_here(hydra_cfg, result.get("stopped_by", ""))
            if result["status"] == "interrupted":
                raise RunError("")
            return metric
        if result["status"] == "interrupted":
            say(f"[tiedlab] interrupted: {cfg.run_dir}: {result['reason']}")
            _stop_here(hydra_cfg, result.get("stopped_by", ""))
            raise RunError(f"[tiedlab] interrupted: {cfg.run_dir}")
        if result["status"] != "failed":
            m = result.get("metrics", {})
            test = m.get(f"test/{cls.primary_metric}")
            say(f"[tiedlab] {result['status']}: {cfg.run_dir} val/{cls.primary_metric}={metric}"
                + (f" test/{cls.primary_metric}={test}" if test is not None else "")
                + (f", {m['time/train_s']:.1f} s training, {result.get('step')} steps"
                   if isinstance(m.get("time/train_s"), (int, float)) else "")
                + (f" ({result['reason']})" if result.get("reason") else ""))
            if result.get("stopped_by"):  # during the final evaluation: the run completed, nothing further starts
                say(f"[tiedlab] {result['stopped_by']} during the final evaluation: stopping")
                _stop_here(hydra_cfg, result["stopped_by"])
            return metric
        where = f" (rank {_rank()})" if _rank() else ""
        message = f"[tiedlab] failed{where}: {cfg.run_dir}: {result['reason']}"
    if message:
        say(message)
    _FAILED.append(str(cfg.run_dir))
    if result.get("stopped_by"):  # a run that failed after a stop came: start nothing further either
        _stop_here(hydra_cfg, result["stopped_by"])
    if hydra_cfg.mode == RunMode.RUN:
        sys.exit(1)  # one line, and no "Error executing job" from Hydra
    raise RunError(message)  # a multirun goes on with its other jobs, then exits 1


def _main() -> None:
    """Hydra's app with tiedlab's error reporting: a failed run or a bad config, data file, run directory or
    override prints one line (no traceback; ``TIEDLAB_TRACEBACK=1`` shows it) and exits with status 1. A process
    of a multi-process run that joined its process group leaves through ``distributed.exit_process``."""
    try:
        _main_reported()
    except SystemExit as done:
        _exit_if_parallel(done.code)
        raise
    except BaseException as err:  # a traceback on request (TIEDLAB_TRACEBACK=1), Ctrl-C: shown, then the same exit
        if _parallel():
            import traceback

            traceback.print_exc()
            _exit_if_parallel(CTRL_C_EXIT if isinstance(err, KeyboardInterrupt) else 1)
        if isinstance(err, KeyboardInterrupt) and not _show_traceback():  # before a run began (or after it ended)
            _report("[tiedlab] stopped by Ctrl-C")
            _leave(CTRL_C_EXIT)
        raise
    _exit_if_parallel(0)


def _parallel() -> bool:
    """Whether this process joined a multi-process run's process group (an error before joining exits as usual:
    without the group's barrier a fast exit could get a peer killed before it printed the error)."""
    distributed = sys.modules.get(f"{__package__}.distributed")
    return distributed is not None and distributed.joined()


def _exit_if_parallel(code: int | str | None) -> None:
    if _parallel():
        from .distributed import exit_process

        exit_process(code)


def _main_reported() -> None:
    from hydra.errors import HydraException

    console.guard(_console_closed)  # a reader that exits (`| head`) or a terminal that hangs up ends no run

    if not _show_traceback():
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing a trace: reported below
    if _rank():  # under torchrun, rank 0 alone prints logging records (and alone writes the run directory)
        sys.argv = [*sys.argv, "hydra/job_logging=none"]
    sys.argv = [*sys.argv, *_hydra_dir_of_run_dir(sys.argv[1:])]
    try:
        _hydra_main()
    except RunError:
        sys.exit(1)  # already reported by the job that failed
    except (HydraException, ValueError) as err:  # a bad override, group choice or config value
        if _show_traceback():
            raise
        _report(f"[tiedlab] error: {config_error(err)}")
        sys.exit(1)
    except OSError as err:  # Hydra could not make the run's directory (a file there, no permission)
        if _show_traceback():
            raise
        _report(f"[tiedlab] error: {err}")
        sys.exit(1)


def _hydra_dir_of_run_dir(args: list[str]) -> list[str]:
    """``hydra.run.dir=X`` for a single run given ``run_dir=X``, so that Hydra makes no stray directory (the one the
    other overrides name, which may be another run's). A multirun's jobs keep their sweep directories, as does a
    run_dir that names Hydra's own directory (``${hydra:...}``, which would name itself) or none (refused by the
    engine)."""
    if any(a in ("-m", "--multirun") for a in args) or any(a.lstrip("+").startswith("hydra.run.dir=") for a in args):
        return []
    given = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("run_dir=")]
    if not given or given[-1].strip() in ("", "null") or "${hydra:" in given[-1]:
        return []  # no directory (refused by the engine), or one named after Hydra's own: Hydra's stays its default
    return [f"hydra.run.dir={given[-1]}"]


def config_error(err: BaseException) -> str:
    """A config error on one line: a mistyped key as "unknown key K; did you mean ...", else Hydra's message
    (``_one_line``) with its cause."""
    cause = f" ({str(err.__cause__).strip().splitlines()[0]})" if err.__cause__ and str(err.__cause__).strip() else ""
    return _did_you_mean(str(err)) or _one_line(str(err)) + cause


def _did_you_mean(message: str) -> str | None:
    """Hydra's "Could not override 'block.depht'" (which suggests '+block.depht', a key nothing reads) as
    "unknown key block.depht; did you mean block.depth?"."""
    import re

    from .config import closest_keys

    match = re.search(r"Could not override '([^']+)'", message)
    if (match and match.group(1) == "study") or message.startswith("In 'study/"):  # study=NAME, +study=NAME
        return "study is not an option of a run: a study runs with `tiedlab-study NAME` (configs/study/NAME.yaml)"
    if not match:
        return None
    key = match.group(1)
    near = closest_keys(key)
    section = key.split(".", 1)[0]
    hint = (f"; did you mean {' or '.join(near)}?" if near else
            "; the paradigm's model keys are those of its configs/paradigm/NAME.yaml" if section == "model" else
            "; the dataset's data keys are those of its configs/data/NAME.yaml" if section == "data" else
            "; see `--help` or configs/train.yaml for the valid keys")
    return f"unknown key {key}{hint}"


def _one_line(message: str) -> str:
    """Hydra's multi-line messages on one line: "Could not find 'block/x'; available options in 'block': deq,
    explicit, tied" (the config search path it appends is left out)."""
    message = message.split("\nConfig search path")[0].strip()
    head, _, options = message.partition("\n\nAvailable options in ")
    if options:
        group, _, names = options.partition(":")
        head += f"; available options in {group}: {', '.join(n.strip() for n in names.split() if n.strip())}"
    return "; ".join(line.strip() for line in head.splitlines() if line.strip())


def _run_with_paradigm(paradigm: str | None) -> None:
    args = sys.argv[1:]
    if paradigm is not None and not any(a.split("=")[0].lstrip("+~") == "paradigm" for a in args):
        # Hydra's flags (-m, --cfg job, ...) must precede the overrides: insert before the first override.
        first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
        args = [*args[:first], f"paradigm={paradigm}", *args[first:]]
    sys.argv = [sys.argv[0], *args]
    _main()


def train() -> None:
    _run_with_paradigm(None)


def vision() -> None:
    _run_with_paradigm("vision")


def ssl() -> None:
    _run_with_paradigm("ssl")


def graph() -> None:
    _run_with_paradigm("graph")


def language() -> None:
    _run_with_paradigm("language")


def study_main() -> None:
    """``tiedlab-study``: see ``tiedlab.paradigms.study``."""
    from .launch import raise_on_sigterm, stopped_by
    from .study import study

    console.guard()  # a reader that exits (`| head`) or a terminal that hangs up stops no study
    previous = raise_on_sigterm()  # SIGTERM stops the runs in flight (each checkpoints) before the study exits
    try:
        code = study()
    except (ValueError, OSError) as err:  # an unknown study or grid, a bad study file: one line, no traceback
        if _show_traceback():
            raise
        print(f"tiedlab-study: error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Stopped): no new run starts; none loses more than a checkpoint
        if _show_traceback():
            raise
        name = stopped_by()
        print(f"tiedlab-study: stopped by {name}: no further run starts and the runs in flight were asked to "
              "checkpoint; rerun the same command to continue", file=sys.stderr)
        code = 128 + int(signal.Signals[name])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code)


if __name__ == "__main__":
    _main()
