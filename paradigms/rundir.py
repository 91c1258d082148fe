"""The run directory contract: the only files reports read, and checkpoints that resume.

    config.yaml     the resolved config
    history.jsonl   one JSON line per evaluation (step, elapsed training seconds, metrics)
    metrics.json    status (running, completed, diverged, failed, interrupted), reason, the config's fingerprint,
                    provenance (commit, packages, host, device, times, command), final metrics
    checkpoint.pt   model, optimiser, schedule, RNG and loop state: tensors and plain Python values only,
                    written atomically, read with ``weights_only=True`` (a planted pickle never runs)
    run.lock        held by the process that trains the run, for the run's lifetime
    traceback.txt   where a run that crashed (status failed) crashed
    .hydra/         the command line's Hydra record (config, hydra, overrides), written once the lock is held
    cli.log         the command line's log (the logging records from then on, its error lines), opened once the
                    lock is held (``RunLog``); reports read neither

torch is imported only by the checkpoint functions, so reports can use the rest without it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import math
import os
import re
import socket
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
LOCK = "run.lock"
COMMAND_LOG = "cli.log"
LOCK_HEARTBEAT_S = 60.0  # a holder touches its lock this often, so another host can tell a live holder from a dead one
LOCK_STALE_S = 600.0  # a lock held on another host and untouched this long: its holder was killed (``launch``)
# A run asked to stop (SIGTERM, SIGUSR2) has this long to checkpoint and exit: its launcher SIGKILLs it after, and so
# does the run itself (``engine._StopSignals``: a run whose launcher died first would hold its lock forever if it hung)
STOP_WAIT_S = 600.0
TRACEBACK = "traceback.txt"
CHECKPOINT_FORMAT = 2  # 2: RNG states as tensors and lists, loadable with weights_only=True
# interrupted: stopped by SIGUSR2/SIGTERM (a scheduler's timeout warning, a preemption) after a checkpoint; resumable
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
FINISHED = ("completed", "diverged")

# Config keys that do not change what a run computes: they may differ between a run and its resume, and
# the report never groups cells by them. The one list of run-directory bookkeeping keys.
NOT_FINGERPRINTED = ("run_dir", "resume", "logger", "train.progress", "train.log_every", "train.time_limit_s",
                     "train.device", "train.threads", "equilibrium", "train.ckpt_every")
# the bookkeeping keys a fingerprint version still hashed: an older run is checked as it was fingerprinted
FINGERPRINTED_UNTIL = {"train.ckpt_every": 3}


def precision(device: Any, amp: bool) -> str:
    """What a run's training steps compute in on ``device`` (a name such as "cuda:0" or "cpu"): "bf16 autocast"
    on CUDA with ``train.amp``, else "fp32" (the engine's ``_autocast``). ``train.device`` is not fingerprinted,
    so checkpoints record this and a resume checks it, and the report groups cells by it."""
    return "bf16 autocast" if str(device).startswith("cuda") and amp else "fp32"


MAX_NAME_BYTES = 200  # a run directory's name; file systems allow 255


def short_dirname(name: str) -> str:
    """A run directory's name from Hydra's ``override_dirname``, unchanged when it fits in ``MAX_NAME_BYTES``;
    else its head and a hash of the whole (the same overrides always give the same name)."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    head = name.encode()[:MAX_NAME_BYTES - 20].decode(errors="ignore")
    return f"{head},hash={hashlib.sha256(name.encode()).hexdigest()[:12]}"


class RunDirError(ValueError):
    """A run directory cannot be used as asked; the message names it and what to do."""


class CheckpointError(RunDirError):
    """A checkpoint exists but cannot be used; the message names the file and what to do."""


class RunLockedError(RunDirError):
    """Another process holds the run directory's lock; the message names it."""


class OtherRunError(RunDirError):
    """The run directory holds another run (another config's, or any under resume=false): the refused command
    writes nothing there, not even its error line in cli.log (``RunLog`` is opened only once the run is its own)."""


# 4: train.ckpt_every left out (how often a run saves changes nothing it computes, and a resume may change it);
# 3: mask.min_dim kept without a mask when a block norm reads it; 2: options a run ignores are left out; 1: every
# key but the bookkeeping ones. A run is checked under the version its metrics.json records.
FINGERPRINT_VERSION = 4
FINGERPRINT_VERSIONS = (1, 2, 3, 4)


def active_config(config: dict[str, Any], version: int = FINGERPRINT_VERSION) -> dict[str, Any]:
    """``config`` less the keys that do not change what the run computes: bookkeeping
    (``NOT_FINGERPRINTED``) and, from version 2 on, what the run ignores: the solver, implicit gradient,
    Jacobian penalty and warm-up of a block that is not a DEQ, a warm-up of 0 steps, and the mask options when
    there is no mask (from version 3 but ``mask.min_dim`` when a weight or spectral norm picks its weights by it)."""
    if version not in FINGERPRINT_VERSIONS:
        raise ValueError(f"fingerprint version {version!r} is not known; versions: "
                         f"{', '.join(map(str, FINGERPRINT_VERSIONS))}")
    plain = json.loads(json.dumps(config, default=str))
    for key in NOT_FINGERPRINTED:
        if version <= FINGERPRINTED_UNTIL.get(key, 0):
            continue
        node, _, rest = key.partition(".")
        if rest:
            (plain.get(node) or {}).pop(rest, None)
        else:
            plain.pop(node, None)
    if version >= 2:
        block = plain.get("block") or {}
        if block.get("mode", "tied") != "deq":
            plain.pop("solver", None)
            plain.pop("grad", None)
            block.pop("jacobian_samples", None)
            (plain.get("train") or {}).pop("jacobian_weight", None)
        train = plain.get("train") or {}
        if block.get("mode", "tied") != "deq" or not train.get("deq_warmup_steps"):
            train.pop("deq_warmup_steps", None)
            train.pop("deq_warmup_depth", None)
        if (plain.get("mask") or {}).get("mode", "none") == "none":
            mask = plain.pop("mask", None) or {}
            if version >= 3 and block.get("norm", "none") != "none" and "min_dim" in mask:
                plain["mask"] = {"min_dim": mask["min_dim"]}  # the norm's weights: those with >= min_dim dims
    return plain


def fingerprint(config: dict[str, Any], version: int = FINGERPRINT_VERSION) -> str:
    """A hash of everything in a resolved config (a plain dict, as in config.yaml) that changes what the
    run computes (see ``active_config``)."""
    return hashlib.sha256(json.dumps(active_config(config, version), sort_keys=True).encode()).hexdigest()[:16]


def same_config(config: dict[str, Any], metrics: dict[str, Any]) -> bool:
    """Whether ``config`` is the one a run's metrics.json was written for (by the fingerprint version it
    records; runs from before versions were recorded used version 1)."""
    version = metrics.get("fingerprint_version", 1)
    return version in FINGERPRINT_VERSIONS and fingerprint(config, version) == metrics.get("fingerprint")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename, the file and then the
    folder synced to disk (so that a machine crash leaves the old file or the new one, and the rename).

    Raises:
        OSError: naming ``path`` (a full disk's ENOSPC names no file by itself).
    """
    with _naming(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # as a plain open() would (mkstemp's 0600 hid runs from a group)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _sync_folder(path.parent)


def _umask() -> int:
    """The process's umask: read where Linux shows it (changing a umask to read it races with other threads'
    file creation), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """fsync a folder (the names in it: a rename or a new file); a file system that cannot is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and platforms) do not sync folders: nothing more can be done here
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an OSError that names no file as one that names ``path``."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, f"{err.strerror or err} while writing {path}", str(path)) from err


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts and lists, as a string ("nan", "inf"): JSON
    has no NaN or infinity (Python would write a bare NaN that strict readers reject); readers parse the strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, obj: dict[str, Any]) -> None:
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def append_history(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / HISTORY
    line = (json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n").encode()
    with _naming(path):
        # 0o666: the umask decides, as for the atomic writes
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def write_text(path: Path, text: str) -> None:
    """``path`` replaced atomically by ``text`` (a symlink at ``path`` is replaced, never followed)."""
    atomic_write_bytes(Path(path), text.encode())


class RunLog(logging.Handler):
    """The command's log in a run directory (cli.log): the logging records of its run and the command's own lines
    (``note``), appended. The engine opens it once the run directory is this process's (locked, of this config,
    unfinished), never through a symbolic link, so a command refused by another's run, or one that failed before it
    held the lock, writes nothing there; lines noted before it opens wait for it and are dropped if it never does.
    While open it is a handler of the root logger (the level is the logger's: Hydra's job logging sets INFO)."""

    FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(self.FORMAT))
        self.path: Path | None = None
        self._fd: int | None = None
        self._waiting: list[str] = []

    def open(self, run_dir: Path) -> None:
        """Start writing to ``run_dir``'s cli.log (created with the umask's permissions; a link there is refused)."""
        if self._fd is not None:
            raise RuntimeError(f"the command log is open already ({self.path})")
        path = Path(run_dir) / COMMAND_LOG
        with _naming(path):
            try:  # O_NONBLOCK: a planted FIFO must not hang the run while it holds its lock
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise RunDirError(f"{path} is a symbolic link: remove it (the run writes its own)") from err
                if err.errno == errno.ENXIO:  # a FIFO without a reader
                    raise RunDirError(f"{path} is not a regular file: remove it (the run writes its own)") from err
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunDirError(f"{path} is not a regular file: remove it (the run writes its own)")
        os.set_blocking(fd, True)
        self._fd, self.path = fd, path
        waiting, self._waiting = self._waiting, []
        for line in waiting:
            self.note(line)
        logging.getLogger().addHandler(self)

    def note(self, line: str) -> None:
        """Append ``line`` (kept until the log opens); a write that fails is dropped (the console has the line)."""
        with self.lock:
            if self._fd is None:
                self._waiting.append(line)
                return
            try:
                os.write(self._fd, (line.rstrip("\n") + "\n").encode())
            except OSError:
                pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.note(self.format(record))
        except Exception:  # noqa: BLE001 - logging's contract: a handler reports its own failure
            self.handleError(record)

    def close(self) -> None:
        """Stop writing (idempotent): off the root logger, the file closed, waiting lines dropped."""
        logging.getLogger().removeHandler(self)
        with self.lock:
            self._waiting = []
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        super().close()


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: the rest is not trustworthy
    return out


def truncate_history(run_dir: Path, step: int) -> None:
    """Drop history lines after ``step`` (written after the checkpoint a resumed run restarts from)."""
    kept = [r for r in read_history(run_dir) if r.get("step", 0) <= step]
    atomic_write_bytes(Path(run_dir) / HISTORY, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Atomically write ``checkpoint.pt`` (temp file, then rename). ``state`` holds tensors and plain
    Python values only (see ``rng_state``), so that it loads with ``weights_only=True``. history.jsonl is synced
    first: a machine crash must not keep a checkpoint at step N and lose history lines before it (a resume cuts
    the history after N, ``truncate_history``, but cannot refill a gap)."""
    import io

    import torch

    history = Path(run_dir) / HISTORY
    if history.exists():
        with _naming(history):
            fd = os.open(history, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buf.getvalue())


def rng_state(cuda_device: Any = None) -> dict[str, Any]:
    """The torch, Python, numpy (and CUDA) generator states as tensors and lists (no numpy objects)."""
    import random

    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "python": [version, list(internal), gauss],
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "cuda": torch.cuda.get_rng_state(cuda_device) if cuda_device is not None else None}


def set_rng_state(state: dict[str, Any], cuda_device: Any = None) -> None:
    """Restore what ``rng_state`` returned."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if cuda_device is not None and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], cuda_device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


def load_checkpoint(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir``, or None when there is none.

    Raises:
        CheckpointError: the file is corrupt, of another format, or from a run with another config
            (``fingerprint`` differs); it is never silently ignored or overwritten.
    """
    import torch

    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        # weights_only: only tensors and plain containers unpickle; anything else (code) is refused.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling error means the same thing here
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
        first = text.splitlines()[0] if text else ""
        raise CheckpointError(
            f"checkpoint {path} is corrupt, unsafe or not a tiedlab checkpoint of format {CHECKPOINT_FORMAT} "
            f"({type(err).__name__}: {first}); delete it to start over, or use another run directory") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format') if isinstance(state, dict) else '?'}, "
                              f"expected {CHECKPOINT_FORMAT}; delete it or use another run directory")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with a different config (fingerprint {state.get('fingerprint')} != "
            f"{fingerprint}); use another run directory, or delete it to start over")
    return state


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json as a dict; {} when absent.

    Raises:
        RunDirError: the file exists but is not a JSON object (naming it).
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return {}
    try:
        out = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is not valid JSON ({err}); delete the run directory to start over") from err
    if not isinstance(out, dict):
        raise RunDirError(f"{path} does not hold a JSON object; delete the run directory to start over")
    return out


def _touch_until(fd: int, stop: threading.Event) -> None:
    """``hold_lock``'s heartbeat: set the lock file's modification time to now until ``stop`` is set."""
    warned = False
    while not stop.wait(LOCK_HEARTBEAT_S):
        try:
            os.utime(fd)
        except OSError as err:  # the lock ages: after LOCK_STALE_S another host's status calls the run stopped
            if not warned:
                print(f"[tiedlab] warning: cannot touch run.lock ({err}); another host may take this run for "
                      f"stopped after {LOCK_STALE_S / 60:g} minutes", file=sys.stderr, flush=True)
                warned = True


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc/PID/stat's field 22; None where /proc does
    not say: not Linux, or no such process). Unlike a wall-clock time it does not move when the clock is set."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def hold_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` (an exclusive flock, released by the kernel if the process dies) while
    the body runs; the file names the holder, and a thread touches it every ``LOCK_HEARTBEAT_S`` seconds (its
    modification time tells a process on another host, which cannot see this one's pid, that the holder lives).

    Raises:
        RunLockedError: another process holds it (naming its pid, host, start time and command).
    """
    import fcntl

    path = Path(run_dir) / LOCK
    try:  # O_NOFOLLOW: a planted symlink must not make us truncate the file it points at
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # the umask decides
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link; a run directory's files must be plain files") from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unknown process"
            raise RunLockedError(f"{run_dir} is in use by another process ({holder}); wait for it to end or "
                                 "use another run directory") from None
        started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        ticks = process_start_ticks(os.getpid())  # tells this process from a later one given the same pid
        holder = (f"pid {os.getpid()} on {socket.gethostname()} since {started}"
                  f"{'' if ticks is None else f' (process start {ticks})'}: {' '.join(sys.argv)}").encode()
        os.pwrite(fd, holder, 0)  # then cut what an earlier, longer holder left: never an empty file
        os.ftruncate(fd, len(holder))
        stop = threading.Event()
        heartbeat = threading.Thread(target=_touch_until, args=(fd, stop), name="run.lock heartbeat", daemon=True)
        heartbeat.start()
        try:
            yield
        finally:
            stop.set()
            heartbeat.join()
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
