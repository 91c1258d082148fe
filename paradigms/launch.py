"""A study's runs one by one, and the engines that place them: Ray (every GPU of a node or of a Ray cluster, K runs
per GPU; CPU slots with threads split between them) and Slurm through submitit (one job array for the whole study,
requeued after a timeout or a preemption), and ``--status`` (what the run directories say, per grid).

The runs are those Hydra's multirun would make for each grid (the same ``run_dir`` names, so a run folder made
by one way of running is found, skipped or resumed by another). Each run is one subprocess of the ordinary
command line (``python -m tiedlab.paradigms.cli ... hydra.run.dir=RUN_DIR``): a new process sees only the GPU
it was given (``CUDA_VISIBLE_DEVICES`` is set before CUDA starts) and the engine's run lock, checkpoint and
resume do the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import rundir
from .provenance import PROCESSES_PER_DEVICE_ENV

INTERRUPTED_EXIT = 75  # the exit status of a run stopped by SIGUSR2/SIGTERM after a checkpoint (EX_TEMPFAIL: resumable)
STOP_WAIT_S = rundir.STOP_WAIT_S  # how long a stopped study waits for its runs in flight to checkpoint and exit


class Stopped(KeyboardInterrupt):
    """Raised in the main thread when this process gets SIGTERM (or SIGHUP) under ``raise_on_sigterm``: a
    KeyboardInterrupt, as for Ctrl-C, so that no ``except Exception`` swallows it (nor Ray's ``ray.wait``, which lets
    only that through; ``stopped_by`` names the signal)."""


_STOPPED_BY: list[str] = []  # the signals ``raise_on_sigterm``'s handler got (Ray re-raises a bare KeyboardInterrupt)


def _raise_stopped(signum: int, frame: Any) -> None:
    _STOPPED_BY.append(signal.Signals(signum).name)
    raise Stopped(_STOPPED_BY[-1])


def stopped_by() -> str:
    """The signal that stopped this process: the first that ``raise_on_sigterm``'s handler got (SIGTERM, SIGHUP),
    else SIGINT (Ctrl-C)."""
    return _STOPPED_BY[0] if _STOPPED_BY else "SIGINT"


def raise_on_sigterm() -> dict[int, Any]:
    """From now on SIGTERM raises ``Stopped`` in this (main) thread, so that a study's driver can pass the stop on
    to its runs in flight (``call``, ``run_with_ray``) instead of dying and leaving them to go on alone; so does a
    terminal's hang-up (SIGHUP), unless this process ignores it (``nohup``). Returns the previous handlers (for
    ``signal.signal``)."""
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_stopped)}
    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _raise_stopped)
    return previous


def stop_process(proc: subprocess.Popen, wait_s: float = STOP_WAIT_S, group: bool = False) -> None:
    """Ask ``proc`` (with ``group``: its whole process group, which it leads) to stop with SIGTERM: a run
    checkpoints at its next step and ends as interrupted, and a Hydra multirun starts no further run. Waits up
    to ``wait_s`` seconds for ``proc`` (and every process of its group: Hydra's joblib workers outlive their
    parent) to exit; after that, or at a second Ctrl-C or SIGTERM, SIGKILLs them (their last checkpoints stand)."""
    def send(sig: int) -> bool:
        """Whether anything was there to signal."""
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            return False
        return True

    if proc.poll() is not None and not group:
        return
    send(signal.SIGTERM)
    deadline = time.time() + wait_s
    try:
        proc.wait(timeout=wait_s)
        while group and _group_alive(proc.pid):  # the group's other processes: until none is left, signalled
            if time.time() > deadline:             # again each second (an orphaned worker may start a queued run)
                raise TimeoutError
            send(signal.SIGTERM)
            time.sleep(1.0)
    except BaseException:  # noqa: BLE001 - out of time, or stopped again: stop now
        send(signal.SIGKILL)
        proc.wait()


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (from /proc: zombies waiting for a reaper do not
    count)."""
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[-1].split()  # state, ppid, pgrp, ...
        except OSError:  # it ended meanwhile
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _on_parent_death(sig: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    def preexec() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    return preexec


def call(cmd: Sequence[str], wait_s: float = STOP_WAIT_S) -> int:
    """``subprocess.call(cmd)`` for a study's Hydra multirun, in a process group of its own: Ctrl-C on the
    terminal reaches this process alone, which passes it on with any SIGTERM it gets (under
    ``raise_on_sigterm``) to the whole group (``stop_process``: the training processes of Hydra's joblib
    launcher too) and waits for it to exit, where ``subprocess.call`` would SIGKILL the child at once. Its runs
    record how many of them train at once (``multirun_share``)."""
    # SIGTERM if this process dies: a killed study still stops its multirun, which checkpoints its run in flight
    proc = subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=_on_parent_death(signal.SIGTERM),
                            env=sharing_env(dict(os.environ), multirun_share(cmd)))
    try:
        return proc.wait()
    except BaseException:
        stop_process(proc, wait_s, group=True)
        raise


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study: its grid, its overrides (the grid's fixed ones, the study's extra ones, its swept
    values) and its run directory."""

    grid: str
    overrides: tuple[str, ...]
    run_dir: str

    @property
    def name(self) -> str:
        return f"{self.grid}/{Path(self.run_dir).name}"


@dataclasses.dataclass(frozen=True)
class SeedBatchSpec:
    """Runs of one grid cell that differ only in seed, trained in one process as one seed batch
    (``tiedlab.paradigms.seedbatch``); its output goes to the first run's ``launch.log``."""

    grid: str
    overrides: tuple[str, ...]  # the runs' overrides less their seed=
    run_dirs: tuple[str, ...]
    seeds: tuple[str, ...]  # each run's seed, as its seed= override gives it (not read back from a shortened name)

    @property
    def name(self) -> str:
        return f"{self.grid}/{' + '.join(Path(d).name for d in self.run_dirs)}"

    @property
    def run_dir(self) -> str:
        return self.run_dirs[0]


def seed_batches(runs: Sequence[RunSpec], k: int, batchable: Callable[[RunSpec], bool]) -> list[Any]:
    """``runs`` with the seeds of each cell (same grid, same overrides but the seed) grouped into seed batches of
    up to ``k`` where ``batchable(first run of the cell)``; a cell's leftover single seed stays a RunSpec."""
    cells: dict[tuple[str, tuple[str, ...]], list[RunSpec]] = {}
    for run in runs:
        rest = tuple(o for o in run.overrides if o.split("=", 1)[0] != "seed")
        cells.setdefault((run.grid, rest), []).append(run)
    out: list[Any] = []
    for (grid, rest), members in cells.items():
        if k < 2 or len(members) < 2 or not batchable(members[0]):
            out.extend(members)
            continue
        for i in range(0, len(members), k):
            chunk = members[i: i + k]
            out.append(chunk[0] if len(chunk) == 1 else SeedBatchSpec(
                grid, rest, tuple(r.run_dir for r in chunk), tuple(_seed_override(r) for r in chunk)))
    return out


def _seed_override(run: RunSpec) -> str:
    """The value of ``run``'s last seed= override (a seed batch's runs differ in it: each has one)."""
    return [o.split("=", 1)[1] for o in run.overrides if o.split("=", 1)[0] == "seed"][-1]


def sweep_values(key: str, value: Any) -> list[str]:
    """The values of one swept key as Hydra's basic sweeper writes them into each job's override (and so into
    its ``override_dirname``): ``seed: [0, 1]`` -> ["0", "1"]; ``flag: [true]`` -> ["true"]."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    (override,) = OverridesParser.create().parse_overrides([f"{key}={text}"])
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def grid_runs(study_name: str, grid: dict[str, Any], out: Path, extra: Sequence[str]) -> list[RunSpec]:
    """The runs Hydra's multirun makes for ``grid`` (``study.study_commands``), in sweep order. A run's
    directory is ``OUT/<grid>/<sorted key=value of the swept keys>`` (shortened by ``rundir.short_dirname`` as the
    ``tiedlab_dirname`` resolver does); a grid that sweeps nothing has one run, in ``OUT/<grid>/<paradigm>``."""
    sweep = grid.get("sweep") or {}
    keys = list(sweep)
    values = [sweep_values(k, sweep[k]) for k in keys]
    fixed = [*grid.get("overrides", []), *extra]
    common = ["train.progress=false", f"logger.group={study_name}/{grid['name']}"]
    runs = []
    for combo in itertools.product(*values):
        pairs = [f"{k}={v}" for k, v in zip(keys, combo)]
        if keys:
            folder = rundir.short_dirname(",".join(sorted(pairs)))
        else:
            folder = next((o.split("=", 1)[1] for o in fixed if o.split("=")[0].lstrip("+~") == "paradigm"),
                          "vision")
        runs.append(RunSpec(grid["name"], (*fixed, *pairs, *common), str(Path(out) / grid["name"] / folder)))
    return runs


def study_runs(study: dict[str, Any], out: Path, extra: Sequence[str]) -> list[RunSpec]:
    """Every run of every grid of ``study``, grid by grid."""
    return [r for g in study["grids"] for r in grid_runs(study.get("name", "study"), g, out, extra)]


def _quoted(value: str) -> str:
    """A Hydra override value quoted (a run directory holds '=' and ',', which Hydra would parse)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sets(run: "RunSpec | SeedBatchSpec", key: str) -> bool:
    """Whether ``run``'s overrides (its grid's and the command's) set ``key``."""
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in run.overrides)


def run_command(run: "RunSpec | SeedBatchSpec", threads: int | None = None) -> list[str]:
    """The command line that trains ``run`` in its directory (and nothing else: Hydra's own files go into the
    run directory's ``.hydra``, as under multirun), or a seed batch's runs in theirs. ``threads`` (the launcher's
    share of the cores) is given as ``train.threads`` unless the run's overrides set it: theirs is kept."""
    share = [f"train.threads={threads}"] if threads and not _sets(run, "train.threads") else []
    if isinstance(run, SeedBatchSpec):
        return [sys.executable, "-m", "tiedlab.paradigms.seedbatch", "--seeds", ",".join(run.seeds), *run.run_dirs,
                "--", *run.overrides, *share]
    return [sys.executable, "-m", "tiedlab.paradigms.cli", *run.overrides, f"hydra.run.dir={_quoted(run.run_dir)}",
            *share]


def on_gpu(run: "RunSpec | SeedBatchSpec") -> "RunSpec | SeedBatchSpec":
    """``run`` told to train on CUDA (``train.device=cuda``) unless its overrides name a device: a launcher that
    hands a run a GPU (``--gpus``, ``--slurm`` with ``gpus_per_node``) must not let ``train.device=auto`` fall back
    to the CPU unseen where the GPU is not visible; the run fails in one line instead. ``train.device`` is not
    fingerprinted: a run started without it resumes."""
    return run if _sets(run, "train.device") else dataclasses.replace(run, overrides=(*run.overrides,
                                                                                    "train.device=cuda"))


def multirun_share(cmd: Sequence[str]) -> int | None:
    """How many training processes a Hydra multirun command runs at once on this machine's device, by its launcher
    (the last ``hydra/launcher=`` override): Hydra's basic launcher one (1); ``local_parallel`` (joblib) its
    ``hydra.launcher.n_jobs`` (configs/hydra/launcher/local_parallel.yaml's unless given; None for joblib's
    "all cores but ..." values below 1); any other launcher (the submitit Slurm one) None: unknown."""
    def last(key: str) -> str | None:
        given = [o.split("=", 1)[1] for o in cmd if "=" in o and o.split("=", 1)[0].lstrip("+~") == key]
        return given[-1] if given else None

    chosen = last("hydra/launcher")
    if chosen is None or chosen == "basic":
        return 1
    if chosen != "local_parallel":
        return None
    n_jobs = last("hydra.launcher.n_jobs")
    if n_jobs is None:
        import importlib.resources

        import yaml

        config = importlib.resources.files("tiedlab.configs") / "hydra" / "launcher" / "local_parallel.yaml"
        n_jobs = str(yaml.safe_load(config.read_text()).get("n_jobs"))
    return int(n_jobs) if n_jobs.isdigit() and int(n_jobs) >= 1 else None


def sharing_env(env: dict[str, str], processes_per_device: int | None) -> dict[str, str]:
    """``env`` telling the runs started with it how many training processes their launcher runs at once on their
    device (``provenance.PROCESSES_PER_DEVICE_ENV``, recorded by each run: step times compare only between runs
    timed alike); None removes an inherited value (the launcher does not know)."""
    env.pop(PROCESSES_PER_DEVICE_ENV, None)
    if processes_per_device is not None:
        env[PROCESSES_PER_DEVICE_ENV] = str(processes_per_device)
    return env


def start_run(run: RunSpec, env: dict[str, str], threads: int | None = None, new_session: bool = False,
              death_signal: int = signal.SIGKILL) -> subprocess.Popen:
    """Start ``run``'s training process, its output appended to ``RUN_DIR/launch.log`` (with ``new_session``, in
    a session of its own: a terminal's Ctrl-C does not reach it, its launcher passes a stop on). The process gets
    ``death_signal`` when its launcher dies: SIGKILL leaves no orphan holding the run's lock; SIGTERM lets the run
    checkpoint and stop on its own (it holds the lock until it has)."""
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    log = open(Path(run.run_dir) / "launch.log", "ab")  # noqa: SIM115 - the child holds it; closed when it exits
    try:
        return subprocess.Popen(run_command(run, threads), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=new_session,
                                preexec_fn=_on_parent_death(death_signal))
    finally:
        log.close()


def started_children(record: Path, since: float) -> set[int]:
    """The pids of the training processes Ray tasks started since ``since`` (``RUNS/.launch/events.jsonl``'s
    "child" lines on this host): a study's own runs, not another command's that holds a lock in the same folder
    (an empty set when the log cannot be read)."""
    try:
        lines = record.read_text().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if (event.get("event") == "child" and float(event.get("t", 0)) >= since
                and event.get("host") == socket.gethostname()):
            out.add(int(event["pid"]))
    return out


def held_here(run_dirs: Sequence[str | Path]) -> dict[str, int]:
    """The run dirs among ``run_dirs`` whose lock a live process on this host holds -> its pid (``lock_holder``)."""
    here = socket.gethostname()
    return {str(d): holder[1] for d in run_dirs if (holder := lock_holder(Path(d))) and holder[0] == here}


def wait_for_locks(run_dirs: Sequence[str | Path], wait_s: float = STOP_WAIT_S) -> list[str]:
    """Wait up to ``wait_s`` seconds until no live process on this host holds the lock of any of ``run_dirs``
    (runs that outlived their launcher, checkpointing); returns those still held then. A holder on another host
    is not waited for (a lost node's lock goes stale only after ``rundir.LOCK_STALE_S``)."""
    deadline = time.time() + wait_s
    held = list(held_here(run_dirs))
    while held and time.time() < deadline:
        time.sleep(0.2)
        held = list(held_here(held))
    return held


def _event(record: Path | None, **fields: Any) -> None:
    """One line of the scheduler's log (``RUNS/.launch/events.jsonl``): which run started or ended where."""
    if record is None:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({**fields, "t": time.time(), "host": socket.gethostname()}) + "\n").encode()
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------- Ray


def gpu_ids(spec: str) -> list[str] | None:
    """``--gpus``: "all" (None: every GPU the node or Ray cluster has) or a comma-separated list of device ids.

    Raises:
        ValueError: an empty or non-integer id, or a repeated one.
    """
    if spec == "all":
        return None
    ids = [s.strip() for s in spec.split(",")]
    if not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus={spec!r} must be 'all' or distinct device ids such as 0,1,2")
    return ids


def count_gpus() -> int:
    """How many GPUs this machine has (nvidia-smi; CUDA is never initialised in this process; 0 when nvidia-smi
    is absent or does not answer)."""
    return listed_gpus() or 0


def listed_gpus() -> int | None:
    """How many GPUs nvidia-smi lists (None: no nvidia-smi, or it failed or did not answer in 30 s: not known, as
    in a container that mounts the CUDA library alone)."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU ")) if proc.returncode == 0 else None


def node_gpus(spec: str) -> list[str]:
    """The GPU ids ``--gpus`` means on this node: "all" is every GPU this shell was given (the entries of
    ``CUDA_VISIBLE_DEVICES`` when it is set, as a Slurm job or a shared machine sets it; else every GPU nvidia-smi
    lists); listed ids must be among those entries when it is set (they are device ids as it names them).

    Raises:
        ValueError: no GPU, or a listed id outside ``CUDA_VISIBLE_DEVICES``.
    """
    ids = gpu_ids(spec)
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = None
    if given is not None:  # CUDA reads the entries up to the first that names no device ("-1", "NoDevFiles")
        visible = []
        for entry in (s.strip() for s in given.split(",")):
            if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
                break
            visible.append(entry)
    if ids is None:
        ids = visible if visible is not None else [str(i) for i in range(count_gpus())]
        if not ids:
            where = (f"CUDA_VISIBLE_DEVICES={given!r} names none" if visible is not None
                     else "nvidia-smi lists none")
            raise ValueError(f"--gpus all: this machine has no GPU for the study ({where}); use --jobs N on CPU")
    elif visible is not None:
        outside = [i for i in ids if i not in visible]
        if outside:
            raise ValueError(f"--gpus={spec}: {','.join(outside)} not among the GPUs this shell was given "
                             f"(CUDA_VISIBLE_DEVICES={given}); name its integer ids, or use --gpus all")
    elif (have := listed_gpus()) is not None:  # an id the node lacks: its runs would see no GPU, train on CPU
        outside = [i for i in ids if not i.isdigit() or int(i) >= have]
        if outside:
            raise ValueError(f"--gpus={spec}: {','.join(outside)} not among this node's {have} GPU(s) (nvidia-smi); "
                             "name ids below that, or use --gpus all")
    return ids


def cluster_threads(nodes: list[dict[str, float]], *, gpus: bool, per_gpu: int, jobs: int) -> int:
    """Threads per run on a Ray cluster whose alive nodes have the ``{"CPU": n, "GPU": g}`` resources given: on
    GPUs, the fewest CPUs any GPU node has per run slot (node CPUs / (its GPUs x ``per_gpu``)), so that every slot
    fits its node; on CPU, the cluster's CPUs / ``jobs``, but no more than the largest node has (a run is one
    process; ``run_with_ray`` keeps at most ``jobs`` in flight)."""
    if gpus:
        shares = [int(n.get("CPU", 0) // (n["GPU"] * per_gpu)) for n in nodes if n.get("GPU", 0) >= 1]
        return max(1, min(shares, default=1))
    cpus = [int(n.get("CPU", 0)) for n in nodes]
    return max(1, min(sum(cpus) // max(1, jobs), max(cpus, default=1)))


STOPPING = "stopping"  # a stopped study's marker beside the events log (``stop_marker``): its tasks Ray retries
# then start no run; each study its own, so that two studies on one runs folder do not stop each other's
RAY_GPU = "ray"  # ``_ray_task``'s device: the GPU share Ray gave the task (a cluster), not one named by the driver


def stop_marker(record: Path) -> Path:
    """This study's stop marker beside its events log ``record``: named by host, process and start, so that only
    this study's tasks read it and only this study writes and removes it."""
    return record.parent / f"{STOPPING}-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"


def _ray_task(run: RunSpec, threads: int | None, record: str | None, gpu: str | None,
              stopped: str | None = None, processes_per_device: int | None = None) -> dict[str, Any]:
    """Inside a Ray worker: train ``run`` on ``gpu`` (a device id the driver placed it on; ``RAY_GPU``: the GPU
    Ray gave this task; None: no GPU), the only device the run sees, unless the study's stop marker ``stopped``
    exists (a task Ray retried after the study was stopped). The run records ``processes_per_device``."""
    import threading

    import ray

    if threading.current_thread() is threading.main_thread():
        # ray.cancel interrupts a task through SIGINT, which a study started in the background (nohup, `&`) leaves
        # ignored in every process it starts: without this a stopped study would wait for its runs to finish
        signal.signal(signal.SIGINT, signal.default_int_handler)

    env = sharing_env(dict(os.environ), processes_per_device)
    device = None
    if gpu is not None:
        device = ",".join(str(i) for i in ray.get_gpu_ids()) if gpu == RAY_GPU else gpu
        env["CUDA_VISIBLE_DEVICES"] = device
        run = on_gpu(run)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    path = Path(record) if record else None
    # A retried task (its worker died) waits for the run's previous process, which checkpoints on its own
    # (its death signal is SIGTERM) and holds the run's lock until it has.
    wait_for_locks([run.run_dir])
    if stopped is not None and Path(stopped).exists():  # a task Ray retried after the study was stopped
        _event(path, event="end", run=run.name, gpu=device, code=INTERRUPTED_EXIT, stopped=True, started=False)
        return {"run": run.name, "gpu": device, "code": INTERRUPTED_EXIT}
    _event(path, event="start", run=run.name, gpu=device, pid=os.getpid())
    proc = start_run(run, env, threads, new_session=True, death_signal=signal.SIGTERM)
    try:
        _event(path, event="child", run=run.name, gpu=device, pid=proc.pid)
        while proc.poll() is None:  # a poll, not a blocking wait: ray.cancel's KeyboardInterrupt lands between sleeps
            time.sleep(0.2)
    except (KeyboardInterrupt, SystemExit):  # ray.cancel (the study was stopped), or a SIGTERM to the worker (Ray's
        # handler exits: a preemption or `scancel` signals every process of the job): the run checkpoints and stops
        # before the worker goes. The next signal (the driver's cancel after a job-wide SIGTERM) is ignored until it
        # has: it would SIGKILL the run (``stop_process``'s second stop)
        main = threading.current_thread() is threading.main_thread()
        ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            stop_process(proc)
        finally:
            for sig, handler in ignored.items():
                signal.signal(sig, handler)
        _event(path, event="end", run=run.name, gpu=device, code=proc.returncode, stopped=True)
        raise
    code = proc.returncode
    _event(path, event="end", run=run.name, gpu=device, code=code)
    return {"run": run.name, "gpu": device, "code": code}


def _gpu_slot(n: int) -> str:
    """The Ray resource that stands for this node's ``n``-th GPU given to the study (``per_gpu`` units of it)."""
    return f"tiedlab_gpu_{n}"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: what a Slurm allocation, a cgroup cpuset or taskset
    gives), which the runs' threads split; ``os.cpu_count()`` counts the whole machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


def ray_share(gpus: str | None, per_gpu: int, jobs: int, address: str | None) -> int | None:
    """What each run ``run_with_ray`` starts records of its device's sharing: at most ``per_gpu`` processes on a GPU
    (Ray's fractional GPUs on a cluster too), ``jobs`` on this machine's CPU; None for a CPU run Ray places on a
    cluster's node, which it shares with whatever else Ray put there."""
    return per_gpu if gpus else jobs if address is None else None


def run_with_ray(runs: list[RunSpec], *, gpus: str | None, per_gpu: int, jobs: int, address: str | None,
                 record: Path | None, retries: int = 3,
                 on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``runs`` with Ray: on GPUs (``gpus`` "all" or ids), ``per_gpu`` at a time on each, each run pinned to
    its GPU: on this node the driver places each run on the GPU with the fewest runs in flight (a resource of
    ``per_gpu`` units per GPU, one per run; Ray's fractional GPUs would fill the first GPUs first and leave the
    others idle when fewer runs than slots are left); on a Ray cluster (``address``) a fractional GPU resource of
    1/per_gpu per run, placed by Ray wherever the cluster has room (the runs folder on a shared file system).
    Without GPUs, ``jobs`` at a time with the CPU cores split between them. A worker that dies
    (killed, out of memory, a lost node) is retried ``retries`` times: its run resumes from its checkpoint.
    Returns one {"run", "gpu", "code"} per run (code -1: the task failed ``retries`` + 1 times)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray runs its workers at niceness 15 (RayConfig worker_niceness), so on a shared machine a study's runs would
    # yield the cores to anything else; a local Ray gives them the launching shell's priority instead.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    cpus = usable_cpus()
    if address is None:
        ids = node_gpus(gpus) if gpus else []
        slots = len(ids) * per_gpu if gpus else jobs
        threads = max(1, cpus // max(1, slots))
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)  # Ray hands out these ids, and only these
    elif gpus not in (None, "all"):
        raise ValueError(f"--gpus={gpus} names devices, which on a Ray cluster (--ray-address) Ray places "
                         "itself: use --gpus all")
    # ray.init puts its own SIGTERM handler in place (sys.exit, then its C++ one, which aborts the driver and
    # leaves the runs in flight to be killed with it): keep the caller's (``raise_on_sigterm``).
    sigterm = signal.getsignal(signal.SIGTERM)
    started = time.time()
    stopping: dict[str, int] = {}  # the runs in flight when the study was stopped: run dir -> its process's pid
    marker: Path | None = None  # this study's stop marker (``stop_marker``), written once it is stopped
    hurry: list[bool] = []  # stopped a second time: the runs in flight are killed, not waited for
    try:
        try:
            if address is None:
                # slots x threads CPUs, each run asking for threads: never more than ``slots`` runs at once
                ray.init(num_cpus=slots * threads, num_gpus=0, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, resources={_gpu_slot(n): per_gpu for n in range(len(ids))})
            else:
                ray.init(address=address, log_to_driver=False)
                nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
                threads = cluster_threads(nodes, gpus=bool(gpus), per_gpu=per_gpu, jobs=jobs)
        except SystemExit as exit_:  # Ray's handler: a SIGTERM while Ray started
            if sigterm is _raise_stopped and exit_.code == signal.SIGTERM:
                _STOPPED_BY.append("SIGTERM")
                raise Stopped("SIGTERM") from None
            raise
        finally:
            if sigterm is _raise_stopped:
                signal.signal(signal.SIGTERM, sigterm)
        placed = address is None and bool(gpus)  # this node's GPUs, placed by the driver
        share = ray_share(gpus, per_gpu, jobs, address)
        options: dict[str, Any] = {"num_cpus": threads, "max_retries": retries, "retry_exceptions": False}
        if gpus and not placed:
            options["num_gpus"] = 1.0 / per_gpu
        remote = ray.remote(_ray_task)
        task = remote.options(**options)
        on_gpu = [remote.options(**options, resources={_gpu_slot(n): 1}) for n in range(len(ids))] if placed else []
        pending: dict[Any, tuple[RunSpec, int | None]] = {}  # a task: its run and the GPU (index) it was placed on
        in_flight = [0] * (len(ids) if placed else 0)
        results = []
        waiting = list(runs)
        # at most a slot's worth in flight: this node's GPU slots; on a cluster without GPUs ``jobs`` (its CPUs
        # would hold more)
        limit = len(ids) * per_gpu if placed else jobs if address is not None and not gpus else len(runs)
        where = str(record) if record else None
        marker = stop_marker(record) if record is not None else None
        stop = str(marker) if marker is not None else None

        def submit() -> None:
            run = waiting.pop(0)
            if placed:
                n = min(range(len(ids)), key=lambda i: in_flight[i])  # the least loaded, the lowest index first
                in_flight[n] += 1
                ref = on_gpu[n].remote(run, threads, where, ids[n], stop, share)
                pending[ref] = (run, n)
            else:
                pending[task.remote(run, threads, where, RAY_GPU if gpus else None, stop, share)] = (run, None)

        try:
            while waiting and len(pending) < limit:
                submit()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                run, n = pending.pop(done[0])
                if n is not None:
                    in_flight[n] -= 1
                if waiting:
                    submit()
                try:
                    result = ray.get(done[0])
                except Exception as err:  # noqa: BLE001 - a task that failed every retry: its run is reported
                    result = {"run": run.name, "gpu": None, "code": -1, "error": f"{type(err).__name__}: {err}"}
                results.append(result)
                if on_done is not None:
                    on_done(result)
        except BaseException:  # Ctrl-C or SIGTERM: runs not started never start, runs in flight checkpoint and stop
            if marker is not None:  # a worker that exits on the signal is retried by Ray: its task starts no run
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"{os.getpid()}\n")
            # the runs in flight: those of the processes this study's tasks started, by the events log (an
            # unreadable or empty log, as on a file system that lost the lines: every run holding a pending lock)
            ours = (started_children(record, since=started) if record else set()) or None
            stopping.update({d: pid for d, pid in held_here([run.run_dir for run, _ in pending.values()]).items()
                             if ours is None or pid in ours})
            for ref in pending:
                ray.cancel(ref)
            try:
                ray.wait(list(pending), num_returns=len(pending), timeout=STOP_WAIT_S)
            except BaseException:  # noqa: BLE001 - stopped again: shut Ray down now, and the runs with it
                hurry.append(True)
            raise
        return results
    finally:
        try:
            ray.shutdown()
        except BaseException:  # noqa: BLE001 - stopped again while Ray shut down: the runs in flight are killed
            hurry.append(True)
            raise
        finally:
            _end_runs_in_flight(stopping, hurry)
            if marker is not None:  # Ray is down: no task of this study is left to read it
                marker.unlink(missing_ok=True)


def _end_runs_in_flight(stopping: dict[str, int], hurry: list[bool]) -> None:
    """After ``run_with_ray`` shut Ray down: wait for the runs that were in flight when the study was stopped
    (``stopping``: run dir -> pid) to release their locks, or with ``hurry`` (stopped again) SIGKILL them. A run
    whose worker went first (a job-wide SIGTERM reaches Ray's processes too; the shutdown kills the workers)
    checkpoints on its own: the study ends after its runs in flight have, or at a second stop kills them (their
    last checkpoints stand), as ``stop_process`` does."""
    try:
        if not hurry:
            wait_for_locks(list(stopping))
    except BaseException:  # noqa: BLE001 - stopped again while waiting
        hurry.append(True)
        raise
    finally:
        for run_dir, pid in held_here(list(stopping)).items() if hurry else ():
            if pid == stopping[run_dir]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# --------------------------------------------------------------------------------------------------- Slurm


class StudyRun:
    """What one submitit array task runs: one run's training process. On SIGUSR2 (Slurm's warning before a
    timeout, or a preemption) submitit calls ``checkpoint``, which passes the signal on to the training process,
    waits for it to checkpoint and exit, and returns the same run for submitit to requeue: the requeued job
    resumes from the run's checkpoint."""

    processes_per_device: int | None = None  # unpickled from a task submitted before it existed: unknown

    def __init__(self, stop_wait_s: float = 600.0, processes_per_device: int | None = None):
        self.stop_wait_s = stop_wait_s
        self.processes_per_device = processes_per_device  # what the run records of its device's sharing (``sharing_env``)
        self._proc: subprocess.Popen | None = None

    def __call__(self, run: RunSpec) -> int:
        self._proc = start_run(run, sharing_env(dict(os.environ), self.processes_per_device))
        code = self._proc.wait()
        self._proc = None
        if code == INTERRUPTED_EXIT:
            # The run itself got SIGTERM/SIGUSR2 (a preemption signals every process of the job) and checkpointed:
            # requeue this job as submitit does after its own checkpoint (Slurm: scontrol requeue; local: the
            # controller restarts it), so it resumes.
            import submitit

            submitit.JobEnvironment()._requeue(0)
            sys.exit(-1)  # as submitit's own handler does after a requeue: no result is written, the job comes back
        if code != 0:
            raise RuntimeError(f"{run.name} exited with status {code}; see {Path(run.run_dir) / 'launch.log'}")
        return code

    def checkpoint(self, run: RunSpec) -> Any:
        import submitit

        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGUSR2)
            # This runs in a signal handler that interrupted ``proc.wait()`` in ``__call__``, which holds the
            # Popen's wait lock: wait with waitpid itself.
            deadline = time.time() + self.stop_wait_s
            while True:
                try:
                    pid, _ = os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    break  # already reaped
                if pid:
                    break
                if time.time() > deadline:
                    proc.kill()  # the last checkpoint stands
                    deadline = float("inf")
                time.sleep(0.05)
        return submitit.helpers.DelayedSubmission(StudyRun(self.stop_wait_s, self.processes_per_device), run)

    def __getstate__(self) -> dict[str, Any]:
        return {"stop_wait_s": self.stop_wait_s, "processes_per_device": self.processes_per_device, "_proc": None}


SLURM_KEYS = ("timeout_min", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "nodes", "partition",
              "array_parallelism", "max_num_timeout", "signal_delay_s", "constraint", "account", "qos")


def slurm_options(given: Sequence[str]) -> dict[str, Any]:
    """configs/hydra/launcher/slurm.yaml's values with ``--slurm-option KEY=VALUE`` ones over them.

    Raises:
        ValueError: a key that is not a Slurm option of this runner, or an option without '='.
    """
    import importlib.resources

    import yaml

    path = Path(str(importlib.resources.files("tiedlab.configs"))) / "hydra" / "launcher" / "slurm.yaml"
    options = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k in SLURM_KEYS}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or key not in SLURM_KEYS:
            raise ValueError(f"--slurm-option {item!r}: expected KEY=VALUE with KEY one of {list(SLURM_KEYS)}")
        options[key] = yaml.safe_load(value)
    for key, allowed in (("nodes", (1,)), ("tasks_per_node", (1,)), ("gpus_per_node", (0, 1))):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or value not in allowed):  # more would sit idle, or
            raise ValueError(f"--slurm-option {key}={value}: a task trains one run, in one process on at most one "
                             f"GPU; {key} must be {' or '.join(map(str, allowed))}")  # start the run twice
    return options


def submit_slurm(runs: list[RunSpec], folder: Path, options: dict[str, Any], name: str,
                 cluster: str | None = None) -> list[Any]:
    """Submit every run as one job array (at most ``array_parallelism`` running at once) and return the jobs
    without waiting. A job that times out is requeued (up to ``max_num_timeout`` times; preemptions without
    limit) and resumes its run. ``cluster`` "local" runs the same submission as local processes (tests).

    Raises:
        ValueError: sbatch refused the array (one line, with Slurm's message).
    """
    import submitit

    o = dict(options)
    # submitit requeues a job once its checkpoint returns: the run must have stopped before Slurm kills the job,
    # signal_delay_s after its warning (submitit's default 90 s)
    stop_wait_s = max(10.0, float(o.get("signal_delay_s") or 90) - 30.0)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster,
                                     slurm_max_num_timeout=int(o.pop("max_num_timeout", 3)))
    # a Slurm task given a GPU has it to itself (gres); one on CPU shares its node with jobs the study does not know,
    # and submitit's local executor starts every task at once, all on the same GPUs
    share = 1 if executor.cluster == "slurm" and int(o.get("gpus_per_node") or 0) == 1 else None
    params: dict[str, Any] = {"name": name, "timeout_min": int(o.pop("timeout_min", 60))}
    for key in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "nodes"):
        if o.get(key) is not None:
            params[key] = o.pop(key)
    if o.get("array_parallelism") is not None:
        params["slurm_array_parallelism"] = int(o.pop("array_parallelism"))
    if o.get("signal_delay_s") is not None:
        params["slurm_signal_delay_s"] = int(o.pop("signal_delay_s"))
    for key in ("partition", "constraint", "account", "qos"):
        if o.get(key) is not None:
            params[f"slurm_{key}"] = o.pop(key)
    executor.update_parameters(**params)
    from submitit.core.utils import FailedJobError

    try:
        return executor.map_array(StudyRun(stop_wait_s, share), runs)
    except FailedJobError as err:  # sbatch refused the array (a partition, account or limit): its own words
        said = " ".join(str(err).split())
        raise ValueError(f"Slurm refused the submission of {len(runs)} runs: {said[:400]}") from None


def slurm_queued(record: Path, job_name: str) -> dict[str, str]:
    """The run directories (resolved) of earlier submissions (``record``: submissions.jsonl, each line's ``jobs[i]``
    trains ``runs[i]``) with an array task still in Slurm's queue (pending, running, requeued: this user's jobs
    named ``job_name`` that ``squeue`` lists), each with its task id. Such a run has no lock while it waits, so
    only the queue can tell that a new submission would train it twice.

    Raises:
        ValueError: there are earlier submissions and ``squeue`` cannot be run here.
    """
    import getpass
    import shutil

    if not record.exists():
        return {}
    tasks: dict[str, list[str]] = {}  # every task each run was submitted as (Slurm does not reuse job ids)
    for line in record.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            for run_dir, job in zip(entry["runs"], entry["jobs"]):
                tasks.setdefault(str(Path(run_dir).resolve()), []).append(str(job))
    if not tasks:
        return {}
    if not shutil.which("squeue"):
        raise ValueError(f"{record} lists earlier submissions, and squeue is not found here to tell which of them "
                         "still wait in the queue: submit from a node with Slurm's commands")
    try:
        proc = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", f"--name={job_name}",
                               f"--user={getpass.getuser()}"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ValueError("squeue did not answer in 60 s: cannot tell which earlier submissions still wait in the "
                         "queue") from None
    if proc.returncode != 0:
        raise ValueError(f"squeue failed ({proc.stderr.strip() or proc.returncode}): cannot tell which earlier "
                         "submissions still wait in the queue")
    queued = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    out = {}
    for run_dir, jobs in tasks.items():
        waiting = [job for job in jobs if job in queued]
        if waiting:
            out[run_dir] = waiting[-1]
    return out


# --------------------------------------------------------------------------------------------------- status


STATUS_COLUMNS = ("runs", "done", "not_at_equilibrium", "diverged", "failed", "running", "stopped", "pending")


def _lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (``lock_holder``)."""
    return lock_holder(run_dir) is not None


def lock_holder(run_dir: Path) -> tuple[str, int] | None:
    """(host, pid) of the live process that holds the run's lock, read from the holder line it wrote (``pid N on
    HOST since ...``; emptied on release) without touching the lock itself (taking it, even briefly, could refuse
    the run's own start); None when no live process holds it. On this host the pid is checked, and that its process
    is the one that wrote the line (the line records its process's start, ``rundir.process_start_ticks``: a holder
    killed with SIGKILL leaves its line, and the pid may since name another process, as when a restarted container
    counts pids from 1 again; a line without it, from an older tiedlab, is judged by its pid alone); a holder on
    another host counts as live while it keeps touching the lock (``rundir.hold_lock``'s heartbeat): a lock
    untouched for ``rundir.LOCK_STALE_S`` seconds was left by a holder killed with no chance to clear it (SIGKILL,
    out of memory, a lost node)."""
    import re

    path = run_dir / rundir.LOCK
    try:
        text = path.read_text(errors="replace").strip()
        touched = path.stat().st_mtime
    except OSError:
        return None
    match = re.match(r"pid (\d+) on (\S+) since \S+?(?: \(process start (\d+)\))?:(?:\s|$)", text)
    if not match:
        return None
    host, pid = match.group(2), int(match.group(1))
    if host != socket.gethostname():
        return (host, pid) if time.time() - touched < rundir.LOCK_STALE_S else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    wrote = match.group(3)
    now = rundir.process_start_ticks(pid)
    return (host, pid) if wrote is None or now is None or int(wrote) == now else None


FINISHED_STATES = ("done", "not_at_equilibrium", "diverged")  # a study reuses these runs instead of training them


def judged_thresholds(config: dict[str, Any]) -> dict[str, Any]:
    """A DEQ run's equilibrium thresholds from its resolved config, as the engine judges them
    (``config.threshold_values``), and the measurement settings the judged values depend on
    (``config.measurement_values``), under ``equilibrium.NAME`` keys ({} for other blocks): not grouped on (a
    report compares them per arm), but a finished run judged under other thresholds or measured otherwise than a
    command asks for is not that command's run (``check_reused``)."""
    from .config import measurement_values, threshold_values

    section = config.get("equilibrium")
    if (config.get("block") or {}).get("mode") != "deq" or not isinstance(section, dict):
        return {}
    return {f"equilibrium.{name}": value
            for name, value in {**threshold_values(section), **measurement_values(section)}.items()}


@functools.lru_cache(maxsize=None)
def _cell_config(overrides: tuple[str, ...]) -> dict[str, Any]:
    """The config a run of ``overrides`` (its cell's: no seed or fold) would record in config.yaml now, resolved
    and flattened as the report groups cells (``reports.load.group_key``: less seeds, bookkeeping and what the
    run's mode ignores). The bookkeeping keys go before resolving: outside a Hydra app their ``${hydra:...}``
    values (the run directory, a logger tag) do not resolve. Cached: the configs do not change while a command
    runs, and a study asks at every look.

    Raises:
        ValueError: the overrides do not compose, give a value a run refuses (``config.check_values``), or a
            compared key does not resolve outside a Hydra app.
    """
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tiedlab.reports.load import NOT_GROUPED, group_key

    from .cli import compose_config
    from .config import check_values

    try:
        composed = compose_config(list(overrides))
        try:
            check_values(composed)  # a bad value: one line now, not a failure in every run of the cell
        except ValueError as err:
            raise ValueError(f"the overrides {' '.join(overrides)} give a run that would fail ({err}): fix the "
                             "grid's or the command's") from None
        plain = OmegaConf.to_container(composed)
        judged = judged_thresholds({"block": {"mode": OmegaConf.select(composed, "block.mode")},
                                    "equilibrium": OmegaConf.to_container(composed.equilibrium, resolve=True)})
        for key in NOT_GROUPED:
            node, _, leaf = key.rpartition(".")
            parent = plain.get(node) if node else plain
            if isinstance(parent, dict):
                parent.pop(leaf, None)
        return {**group_key(OmegaConf.to_container(OmegaConf.create(plain), resolve=True)), **judged}
    except (HydraException, OmegaConfBaseException) as err:
        from .cli import config_error

        raise ValueError(f"the overrides {' '.join(overrides)} do not compose ({config_error(err)}): "
                         "fix the grid's or the command's") from None


def _cell_of(run: RunSpec) -> tuple[str, ...]:
    """The overrides of ``run``'s cell: its own less the replicate keys (seed, fold)."""
    from tiedlab.reports.load import REPLICATE_KEYS

    return tuple(o for o in run.overrides if o.split("=", 1)[0].lstrip("+~") not in REPLICATE_KEYS)


def check_composes(runs: Sequence[RunSpec]) -> None:
    """Compose each cell of ``runs`` once and check its values (``_cell_config``, cached), so that a mistyped
    override of a grid, of a swept value or of the command, or a value a run refuses, is one line before anything
    is launched, not a failure in every task a scheduler starts.

    Raises:
        ValueError: naming the overrides that do not compose or give a refused value.
    """
    for cell in dict.fromkeys(_cell_of(run) for run in runs):
        _cell_config(cell)


def check_reused(runs: Sequence[RunSpec]) -> None:
    """Every finished run of ``runs`` (``FINISHED_STATES``: what a study skips, and whose results it reports) was
    trained with the config its grid and the command's overrides compose now, and every stopped or failed one that
    recorded metrics was started with it (the engine refuses to resume a run of another config: a scheduler's task
    for it would fail; its equilibrium thresholds, not fingerprinted, may differ). A study skips a finished run by its
    directory, whose name holds only the swept values: without this check the runs of an earlier command with other
    overrides (``train.max_steps=50``), or of a grid whose overrides were edited since, would be reported as this
    study's runs. Compared as the report compares an arm's runs (``reports.primary.config_differences``): on the
    keys both configs hold, so a run written before an option was added is still reused. One composition per cell.

    Raises:
        ValueError: naming the first such run and the keys that differ.
    """
    import yaml

    from tiedlab.reports.load import group_key

    for run in runs:
        state = run_state(Path(run.run_dir))
        finished = state in FINISHED_STATES
        if not finished and not (state in ("stopped", "failed") and (Path(run.run_dir) / rundir.METRICS).exists()):
            continue
        now = _cell_config(_cell_of(run))
        what = "a finished" if finished else f"an unfinished ({state})"
        try:
            raw = yaml.safe_load((Path(run.run_dir) / rundir.CONFIG).read_text()) or {}
            judged = judged_thresholds(raw)
            recorded = {**group_key(raw), **(judged if finished else {})}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{run.run_dir} holds {what} run whose {rundir.CONFIG} cannot be read "
                             f"({type(err).__name__}); restore it, or delete the run to train it again") from None
        differ = sorted(k for k in set(now) & set(recorded)
                        if json.dumps(now[k], default=str) != json.dumps(recorded[k], default=str))
        if differ:
            shown = ", ".join(f"{k}={recorded[k]} (now {now[k]})" for k in differ[:3])
            why = ("the study would report it as this grid's run" if finished else
                   "the run would refuse to resume it, in every task a scheduler starts for it")
            raise ValueError(
                f"{run.run_dir} holds {what} run of another config than its grid and this command's overrides "
                f"compose now: {shown}{f' and {len(differ) - 3} more' if len(differ) > 3 else ''}; {why}: use "
                "another --runs folder, or delete that run to train it again")


def used_time_limit(run_dir: Path, metrics: dict[str, Any]) -> bool:
    """Whether a run ended by its ``train.time_limit_s``: completed short of its last step after training for the
    limit its config.yaml records (the engine's test, at that limit: a rerun under a larger one continues it)."""
    import yaml

    if metrics.get("status") != "completed" or metrics.get("step", 0) >= metrics.get("total_steps", 1):
        return False
    try:
        limit = ((yaml.safe_load((run_dir / rundir.CONFIG).read_text()) or {}).get("train") or {}).get("time_limit_s")
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    spent = (metrics.get("metrics") or {}).get("time/train_s")
    return isinstance(limit, (int, float)) and isinstance(spent, (int, float)) and spent >= float(limit)


def run_state(run_dir: Path) -> str:
    """done | not_at_equilibrium (done, but a DEQ that did not end at equilibrium) | diverged | failed |
    running (its process holds the lock) | stopped (started, not running: interrupted, killed or time-limited;
    a rerun resumes it, or for a run that used its time limit trains nothing unless the limit grew,
    ``used_time_limit``) | pending (never started). A run that took its lock and released it without writing
    metrics.json failed before training (missing data, a bad override: its cli.log says); one whose lock still
    names a holder that is gone was killed before it wrote anything (stopped)."""
    try:
        metrics = rundir.read_metrics(run_dir)
    except rundir.RunDirError:
        return "failed"
    status = metrics.get("status")
    if _lock_held(run_dir):
        return "running"
    if status == "diverged":
        return "diverged"
    if status == "failed":
        return "failed"
    if status == "completed" and metrics.get("step", 0) >= metrics.get("total_steps", 1):
        eq = metrics.get("equilibrium")
        return "not_at_equilibrium" if isinstance(eq, dict) and eq.get("at_equilibrium") is False else "done"
    if metrics or (run_dir / rundir.CHECKPOINT).exists():
        return "stopped"
    try:
        holder = (run_dir / rundir.LOCK).read_text(errors="replace").strip()
    except OSError:
        return "pending"
    if _lock_held(run_dir) or (run_dir / rundir.METRICS).exists():  # it started since the reads above
        return "running"
    return "stopped" if holder else "failed"


def study_status(runs: list[RunSpec]) -> dict[str, dict[str, int]]:
    """Per grid, how many of its runs are in each of ``STATUS_COLUMNS`` (``run_state``)."""
    table: dict[str, dict[str, int]] = {}
    for run in runs:
        row = table.setdefault(run.grid, dict.fromkeys(STATUS_COLUMNS, 0))
        row["runs"] += 1
        row[run_state(Path(run.run_dir))] += 1
    return table


def format_status(table: dict[str, dict[str, int]]) -> str:
    """The status table as aligned text, with a total row."""
    total = {c: sum(row[c] for row in table.values()) for c in STATUS_COLUMNS}
    heads = ["grid", *(c.replace("_", "-") for c in STATUS_COLUMNS)]
    rows = [[g, *(str(row[c]) for c in STATUS_COLUMNS)] for g, row in table.items()]
    rows.append(["total", *(str(total[c]) for c in STATUS_COLUMNS)])
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(heads), *(fmt(r) for r in rows)])
