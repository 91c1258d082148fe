"""The wandb tracker: loud when disabled, no network when offline, one wandb run per run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tiedlab.paradigms import tracking
from tiedlab.paradigms.config import LoggerConfig
from tiedlab.paradigms.tracking import WANDB_ID, make_tracker, read_run_id

wandb = pytest.importorskip("wandb")

# Records, and refuses, every Python-level network attempt that is not a unix socket or loopback: the
# events are raised by the socket module itself, so this sees urllib3/requests/asyncio/OpenTelemetry alike.
GUARD = """
import os, socket, sys

_LOG = os.environ["TIEDLAB_NET_LOG"]
_LOCAL = {None, "", "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1", b"::1"}

def _local(address):
    if isinstance(address, (str, bytes)):  # a unix socket path
        return True
    return isinstance(address, tuple) and address[0] in _LOCAL

def _guard(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        bad = args[0] not in _LOCAL
    elif event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        bad = not _local(args[1])
    else:
        return
    if bad:
        with open(_LOG, "a") as fh:
            fh.write(f"{event} {args[1:] if event.startswith('socket.connect') else args}\\n")
        raise OSError(f"network access refused by the test: {event} {args!r}")

sys.addaudithook(_guard)
"""

# One training process's use of the tracker, as the engine makes it.
RUN = """
import sys
from pathlib import Path
from omegaconf import OmegaConf
from tiedlab.paradigms.tracking import make_tracker

cfg = OmegaConf.create(dict(name="wandb", project="tiedlab", mode="offline", dir=None, group="quick/toy", tags=[]))
tracker = make_tracker(cfg, Path(sys.argv[1]), {"seed": 0})
for step in (10, 20):
    tracker.log({"val/loss": 1.0 / step}, step)
tracker.finish({"final/val/loss": 0.05, "status": "completed"})
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """wandb's caches and settings under tmp_path; os.environ and the warn-once flag as they were."""
    saved = dict(os.environ)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ[var] = str(tmp_path / "wandb-home" / var.lower())
    monkeypatch.setattr(tracking, "_warned_disabled", False)
    yield
    os.environ.clear()
    os.environ.update(saved)


def logger(**changes):
    return OmegaConf.structured(LoggerConfig(name="wandb", **changes))


class FakeRun:
    def __init__(self, run_id: str):
        self.id, self.summary, self.logged, self.finished = run_id, {}, [], False

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_init(monkeypatch):
    """Replace wandb.init by a recorder of its keyword arguments (no wandb-core process)."""
    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        return FakeRun(kwargs.get("id"))

    monkeypatch.setattr(wandb, "init", init)
    return calls


def test_wandb_disabled_by_the_environment_says_so_once(tmp_path, capsys, fake_init):
    os.environ["WANDB_MODE"] = "disabled"
    for name in ("a", "b"):  # two runs in one process (a multirun): one warning
        tracker = make_tracker(logger(), tmp_path / name, {})
        tracker.log({"val/loss": 1.0}, 10)
        tracker.finish({"status": "completed"})
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[tiedlab] warning:")]
    assert len(warnings) == 1, warnings
    assert "logger=wandb logs nothing" in warnings[0] and "WANDB_MODE=disabled" in warnings[0]
    assert "WANDB_MODE=offline" in warnings[0] and "logger.mode=offline" in warnings[0]
    assert fake_init == [] and not list(tmp_path.rglob(WANDB_ID))


def test_wandb_disabled_on_request_is_silent(tmp_path, capsys, fake_init):
    os.environ.pop("WANDB_MODE", None)
    make_tracker(logger(mode="disabled"), tmp_path, {}).finish({})
    assert "[tiedlab] warning" not in capsys.readouterr().err
    assert fake_init == []


@pytest.mark.parametrize("source", ["logger.mode", "WANDB_MODE"])
def test_an_unknown_wandb_mode_is_an_error_naming_the_choices(tmp_path, source, fake_init):
    os.environ["WANDB_MODE"] = "ofline" if source == "WANDB_MODE" else "offline"
    cfg = logger(mode="ofline") if source == "logger.mode" else logger()
    with pytest.raises(ValueError, match=rf"{source}='ofline'.*offline, online, disabled"):
        make_tracker(cfg, tmp_path, {})
    assert fake_init == []


def test_one_wandb_run_per_run_directory_continued_and_grouped(tmp_path, fake_init):
    os.environ.pop("WANDB_MODE", None)
    cfg = logger(group="quick/vision_depth")
    first = make_tracker(cfg, tmp_path / "run", {"seed": 0})
    run_id = read_run_id(tmp_path / "run")
    assert run_id and fake_init[0]["id"] == run_id == first.run.id
    second = make_tracker(cfg, tmp_path / "run", {"seed": 0})  # a later process resuming the run directory
    assert fake_init[1]["id"] == run_id == second.run.id
    for call in fake_init:
        assert call["resume"] == "allow" and call["group"] == "quick/vision_depth" and call["mode"] == "offline"
        assert call["dir"] == str(tmp_path / "run") and call["name"] == "run"
        assert call["settings"].init_timeout <= 60
    other = make_tracker(cfg, tmp_path / "other", {})
    assert other.run.id != run_id
    make_tracker(logger(dir=str(tmp_path / "wb")), tmp_path / "run", {})
    assert fake_init[-1]["dir"] == str(tmp_path / "wb") and fake_init[-1]["group"] is None
    assert fake_init[-1]["id"] == run_id  # the id lives in the run directory, wherever wandb's files go


def test_a_fresh_run_directory_gets_a_new_wandb_run(tmp_path, fake_init):
    make_tracker(logger(mode="offline"), tmp_path, {})
    old = read_run_id(tmp_path)
    make_tracker(logger(mode="offline"), tmp_path, {}, fresh=True)
    assert fake_init[-1]["id"] == read_run_id(tmp_path) != old


def test_a_corrupt_wandb_id_file_is_an_error_naming_it(tmp_path, fake_init):
    (tmp_path / WANDB_ID).write_text("no/such id\n")
    with pytest.raises(ValueError, match=rf"{WANDB_ID} holds 'no/such id'.*delete the file"):
        make_tracker(logger(mode="offline"), tmp_path, {})
    assert fake_init == []


def test_a_failing_wandb_init_is_one_runtime_error(tmp_path, monkeypatch):
    def init(**kwargs):
        raise TimeoutError("wandb-core did not answer")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(RuntimeError, match=r"wandb.init failed \(mode offline, dir .*\): TimeoutError: wandb-core"):
        make_tracker(logger(mode="offline"), tmp_path, {})


def _offline_process(tmp_path: Path, run_dir: Path, prefix: list[str] = ()) -> Path:
    """Run RUN in a fresh Python with GUARD installed; returns the file of refused network attempts."""
    (tmp_path / "guard").mkdir(exist_ok=True)
    (tmp_path / "guard" / "sitecustomize.py").write_text(GUARD)
    (tmp_path / "run.py").write_text(RUN)
    net_log = tmp_path / "network-attempts.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_ERROR_REPORTING")}
    env.update(PYTHONPATH=str(tmp_path / "guard"), TIEDLAB_NET_LOG=str(net_log))
    done = subprocess.run([*prefix, sys.executable, str(tmp_path / "run.py"), str(run_dir)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return net_log


def _offline_runs(directory: Path) -> list[Path]:
    return sorted((directory / "wandb").glob("offline-run-*"))


def test_offline_wandb_opens_no_network_connection(tmp_path):
    run_dir = tmp_path / "run"
    net_log = _offline_process(tmp_path, run_dir)
    attempts = net_log.read_text() if net_log.exists() else ""
    assert attempts == "", f"offline wandb tried the network:\n{attempts}"
    (run,) = _offline_runs(run_dir)
    assert list(run.glob("*.wandb")), "wandb wrote no offline run file"
    # wandb-core (Go, out of reach of the Python guard) was started without its error reporting/analytics
    core_log = (run / "logs" / "debug-core.log").read_text().splitlines()
    start = next(json.loads(line) for line in core_log if "starting server" in line)
    assert start["disable-analytics"] is True


def _no_network_prefix() -> list[str] | None:
    """``unshare`` arguments that run a command in a new network namespace (no interfaces), if allowed here."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def test_offline_wandb_without_a_network_finishes(tmp_path):
    prefix = _no_network_prefix()
    if prefix is None:
        pytest.skip("unshare cannot make a network namespace here")
    net_log = _offline_process(tmp_path, tmp_path / "run", prefix)  # times out (fails) if anything waits
    assert not net_log.exists(), net_log.read_text()
    (run,) = _offline_runs(tmp_path / "run")
    assert list(run.glob("*.wandb")), "wandb wrote no offline run file"


def test_a_resumed_run_directory_continues_its_offline_wandb_run(tmp_path):
    os.environ.pop("WANDB_MODE", None)
    cfg = logger(mode="offline", group="quick/toy")
    for step in (10, 30):  # the first process, then the one that resumes the run directory
        tracker = make_tracker(cfg, tmp_path / "run", {"seed": 0})
        tracker.log({"val/loss": 1.0 / step}, step)
        tracker.finish({"status": "completed"})
        assert tracker.run.group == "quick/toy"
    runs = _offline_runs(tmp_path / "run")
    run_id = read_run_id(tmp_path / "run")
    # two offline runs with the same id (two in one second get a "-1" folder suffix): `wandb sync` joins them
    assert len(runs) == 2 and all((run / f"run-{run_id}.wandb").exists() for run in runs), runs


def test_two_run_directories_log_to_their_own_offline_wandb_runs_at_once(tmp_path):
    """A seed batch trains K runs in one process: each run's tracker stays open beside the others (a second
    wandb.init must not finish the first run, whose next log would then fail)."""
    os.environ.pop("WANDB_MODE", None)
    cfg = logger(mode="offline", group="quick/toy")
    trackers = [make_tracker(cfg, tmp_path / f"seed{s}", {"seed": s}) for s in (0, 1)]
    for step in (10, 20):
        for s, tracker in enumerate(trackers):
            tracker.log({"val/loss": (s + 1.0) / step}, step)
    for tracker in trackers:
        tracker.finish({"status": "completed"})
    for s in (0, 1):
        (run,) = _offline_runs(tmp_path / f"seed{s}")
        assert (run / f"run-{read_run_id(tmp_path / f'seed{s}')}.wandb").exists()
    assert trackers[0].run.id != trackers[1].run.id


def test_a_run_directory_opened_again_in_the_same_process_closes_its_stale_wandb_run(tmp_path):
    """A run left open (a Ctrl-C, a crash before the tracker finished) and resumed in the same process (a notebook,
    the Python API): the stale wandb run is closed and the run continues under its id, not refused as in use."""
    os.environ.pop("WANDB_MODE", None)
    cfg = logger(mode="offline", group="quick/toy")
    left_open = make_tracker(cfg, tmp_path / "run", {"seed": 0})
    left_open.log({"val/loss": 0.5}, 10)
    resumed = make_tracker(cfg, tmp_path / "run", {"seed": 0})
    resumed.log({"val/loss": 0.25}, 20)
    resumed.finish({"status": "completed"})
    assert resumed.run.id == left_open.run.id == read_run_id(tmp_path / "run")
