"""Chaos test of distributed search: many workers, killed at random moments, and a database that
goes away for a few seconds; at the end nothing may be lost or done twice.

    python benchmarks/chaos.py [--backend workers|ray|both] [--trials 300] [--workers 16]
                               [--mean-gap 2.0] [--seed 0] [--out DIR]

``workers``: ``autocompress worker`` processes sharing a study on a throwaway PostgreSQL server.
The chaos kills a random worker with SIGKILL (it is started again a moment later) and stops the
server (``pg_ctl stop -m immediate``: connections cut as in a crash) for one to four seconds.
``ray``: the driver (``autocompress search`` with ``search.backend: ray`` and the study on that
PostgreSQL server) with as many concurrent trials; the chaos kills a Ray worker that runs a
trial, kills the driver together with its private Ray cluster and starts it again (Tune restores
the experiment), and stops the server. Crashes that the chaos did not cause are reported, and
the process is started again like a killed one.

Chaos stops once the study holds ``--trials`` finished trials; the last processes then exit on
their own. The run must then hold exactly ``--trials`` trials that count, with no trial number
or candidate twice, no trial left running or waiting, every failed trial retried or holding its
reason, ``trials.csv`` equal to the study, ``pareto.csv`` equal to the front of ``trials.csv``,
and ``autocompress pareto``, ``report`` and ``export`` working on the run folder.

Trials are simulated (``evaluator: simulated``): the candidates are real (built, priced on the
analytic profile, saved), the accuracy comes from a synthetic table after a short sleep, so a
run of hundreds of trials takes minutes and what is measured is the orchestration.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from autocompress.config import load_config, parse_config
from autocompress.core import RunDir, pareto_front
from autocompress.core.files import pid_alive
from autocompress.core.trials import RETRY_ATTR, trials_dataframe
from autocompress.evaluators.simulated import synthetic_table
from autocompress.search.setup import prepare_setup
from autocompress.search.storage import make_storage
from autocompress.search.study import DUPLICATE_ATTR, count_done, counted
from autocompress.spaces import JointSearchSpace
from autocompress.spaces.sampling import enumerate_candidates

RUN_NAME = "chaos"
# The tiny digits search's data and space (3,456 candidates), shared with scaling.py.
TINY_DIGITS = {
    "data": {"dataset": "digits", "val_fraction": 0.25, "batch_size": 128},
    "space": {
        "family": "small_cnn",
        "arch": {"depths": [2], "widths": [8, 16], "kernel_sizes": [3], "strides": [1, 2]},
        "w_bits": [2, 4, 8],
        "a_bits": [4, 8],
        "prune_ratios": [0.0, 0.5],
    },
}
# How often each strike is chosen, relative to the others possible at the moment: processes die
# more often than the database goes away, and a Ray driver holds the whole run.
# The database stays up at least this long between stops: else, while no process is working
# (all starting up, say) stopping it is the only strike possible, and it would be down for good.
DB_UP_MIN_S = 15.0
STRIKE_WEIGHTS = {"kill_worker": 4, "kill_trial": 4, "kill_driver": 1, "stop_db": 1}


def chaos_config(
    *, n_trials: int, workers: int, backend: str, storage: str | None, table: Path, seconds: float
) -> dict:
    """The run config: the tiny digits search (3456 candidates), each trial answered by the
    simulated evaluator from ``table`` after about ``seconds``; heartbeats every second and a
    short grace period (the chaos cuts many trials off; each waits that long to be retried)."""
    config = {
        "name": RUN_NAME,
        "seed": 0,
        **copy.deepcopy(TINY_DIGITS),
        "teacher": {"epochs": 1, "lr": 0.01},
        "train": {"epochs": 1, "lr": 0.01},
        "evaluator": {
            "name": "simulated",
            "options": {"table": str(table), "trial_seconds": seconds, "jitter": 0.3},
        },
        "hardware": {"profile": "analytic", "device": "cortex_a72"},
        "search": {
            "n_trials": n_trials,
            "sampler": "random",
            "objectives": ["accuracy", "latency_ms", "size_kb"],
            "storage": storage,
            "save_models": True,  # export reads them
            "backend": "ray" if backend == "ray" else "optuna",
            "early_stopping": {"enabled": False},
            "worker": {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 5, "threads": 1},
            # Many cheap trials at once: a fraction of a core each.
            "ray": {"workers": workers, "cpus_per_trial": 0.1, "max_failures": 5},
        },
    }
    if storage is None:
        del config["search"]["storage"]
    return config


def write_table(config: dict, path: Path) -> None:
    """The simulated evaluator's table: every candidate of the config's space, synthetic."""
    parsed = parse_config(config)
    space = JointSearchSpace(parsed.space, num_classes=10, input_shape=(1, 8, 8))
    table = synthetic_table(
        enumerate_candidates(space), epochs=parsed.train.epochs, seed=parsed.seed
    )
    path.write_text(json.dumps(table))


class LocalPostgres:
    """A throwaway PostgreSQL server on 127.0.0.1 that can be stopped (as in a crash) and
    started again on the same port; run as the 'postgres' user when this process is root."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = shutil.which("initdb") or (str(bins[-1]) if bins else None)
        if initdb is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.initdb = initdb
        self.pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        # Its own folder in /tmp: the 'postgres' user must reach it, and may not reach the
        # caller's (pytest's tmp_path is private to root, say).
        self.root = root = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(root, user="postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "log")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        self.running = True

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.running = False

    def close(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {done.stderr or done.stdout}")


@dataclass
class ChaosLog:
    """What the chaos did, and what failed without it."""

    events: Counter = field(default_factory=Counter)  # kill_worker, kill_driver, stop_db ...
    crashes: list[str] = field(default_factory=list)  # exits the chaos did not cause
    seconds: float = 0.0
    trace: list[str] = field(default_factory=list)  # what happened when, one line each

    def note(self, started: float, text: str) -> None:
        self.trace.append(f"{time.monotonic() - started:7.1f} s  {text}")


class Process:
    """One supervised process (a worker or the Ray driver): its command, its current Popen, and
    when to start it again after it died."""

    def __init__(self, name: str, command: list[str], logs: Path, *, session: bool) -> None:
        self.name = name
        self.command = command
        self.logs = logs
        self.session = session  # own process group: killed with everything it started
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.killed = False  # by the chaos, so its exit is expected
        self.restart_at: float | None = None
        self.clean_exit = False
        self.started_at = 0.0
        self.started_wall = 0.0

    def start(self) -> None:
        self.generation += 1
        log = open(self.logs / f"{self.name}-{self.generation}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.session,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # a killed process's log is complete
        )
        log.close()  # the child holds its own descriptor
        self.killed = False
        self.restart_at = None
        self.clean_exit = False
        self.started_at = time.monotonic()
        self.started_wall = time.time()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def settled(self, seconds: float, markers: list[tuple[int, float]]) -> bool:
        """Alive for ``seconds`` and past its start-up (imports, joining the study, which on a
        loaded machine take many seconds): it (a worker) or a Ray worker of its cluster (a
        driver) has started a trial since it started. ``markers``: (pid, time written) of the
        trials' worker files. Killing it sooner would only ever hit the start-up."""
        if not self.alive() or time.monotonic() - self.started_at < seconds:
            return False
        if self.session:
            return any(written >= self.started_wall for _, written in markers)
        return any(pid == self.proc.pid for pid, _ in markers)

    def kill(self) -> None:
        assert self.proc is not None
        if self.session:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.kill()
        self.killed = True
        self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        text = (self.logs / f"{self.name}-{self.generation}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Chaos:
    """Supervise processes and hit them (and the database) at random moments until the study
    holds ``n_trials`` finished trials, then let the processes finish on their own."""

    def __init__(
        self,
        processes: list[Process],
        *,
        storage_url: str,
        n_trials: int,
        rng: random.Random,
        mean_gap: float,
        settle: float,
        postgres: LocalPostgres | None,
        run_dir: Path,
        log: ChaosLog,
        milestones: list[tuple[float, str]] = (),
    ) -> None:
        self.processes = processes
        self.storage_url = storage_url
        self.n_trials = n_trials
        self.rng = rng
        self.mean_gap = mean_gap
        self.settle = settle
        # (fraction of n_trials done, strike): struck once that many trials are done (as soon
        # as the strike is possible), whatever the random strikes did: a short run is sure to
        # see each kind.
        self.milestones = sorted(milestones)
        self.postgres = postgres
        self.run_dir = run_dir
        self.log = log
        self._storage = None
        self._db_back_at: float | None = None
        self._db_up_since = -math.inf
        # A process that keeps crashing (a bad config, a bug) would be restarted forever.
        self.max_crashes = 10 + 2 * len(processes)

    def run(self, *, timeout: float) -> None:
        start = self.started = time.monotonic()
        for process in self.processes:
            process.start()
        next_event = start + self._gap()
        next_poll = start
        done = False
        count = 0
        while not done:
            now = time.monotonic()
            if now - start > timeout:
                raise TimeoutError(f"the study did not reach {self.n_trials} trials in time")
            self._supervise(now, restart=True)
            if self._db_back_at is not None and now >= self._db_back_at:
                self.postgres.start()
                self._db_back_at = None
                self._db_up_since = time.monotonic()
                self.log.note(self.started, "database started")
            if now >= next_event:
                self._strike(now, self.actions())
                next_event = now + self._gap()
            if self.milestones and count >= self.milestones[0][0] * self.n_trials:
                if self.milestones[0][1] in self.actions():
                    self._strike(now, [self.milestones.pop(0)[1]])
            if now >= next_poll:
                found = self._trials_done()
                if found > count:
                    self.log.note(self.started, f"{found} trials done")
                count = max(count, found)
                done = count >= self.n_trials
                next_poll = now + 0.5
            time.sleep(0.05)
        # The target is reached: no more chaos. Start what is down, wait for all to finish.
        if self._db_back_at is not None:
            self.postgres.start()
            self._db_back_at = None
        while any(p.alive() or p.restart_at is not None for p in self.processes):
            now = time.monotonic()
            if now - start > timeout:
                raise TimeoutError("the processes did not exit after the study was done")
            self._supervise(now, restart=True)
            time.sleep(0.1)
        self.log.seconds = time.monotonic() - start

    def _supervise(self, now: float, *, restart: bool) -> None:
        for process in self.processes:
            if process.proc is not None and process.proc.poll() is not None:
                code = process.proc.returncode
                if process.restart_at is None and not process.clean_exit:
                    if code == 0 and not process.killed:
                        process.clean_exit = True
                        continue
                    if not process.killed:
                        self.log.crashes.append(
                            f"{process.name} (run {process.generation}) exited with {code}:\n"
                            + process.log_tail()
                        )
                        if len(self.log.crashes) > self.max_crashes:
                            raise RuntimeError(
                                f"{len(self.log.crashes)} crashes; the last:\n"
                                + self.log.crashes[-1]
                            )
                    process.restart_at = now + self.rng.uniform(0.2, 2.0)
                    self.log.note(self.started, f"{process.name} exited with {code}")
            if restart and process.restart_at is not None and now >= process.restart_at:
                process.start()
                self.log.note(self.started, f"{process.name} started (pid {process.proc.pid})")

    def _gap(self) -> float:
        return math.inf if self.mean_gap <= 0 else self.rng.expovariate(1 / self.mean_gap)

    def _strike(self, now: float, actions: list[str]) -> None:
        if not actions:
            return
        action = self.rng.choices(actions, weights=[STRIKE_WEIGHTS[a] for a in actions])[0]
        self.log.note(self.started, f"strike: {action}")
        if action == "stop_db":
            self.postgres.stop()
            self._db_back_at = now + self.rng.uniform(1.0, 4.0)
        else:
            target = action_target = self.rng.choice(self._targets(action))
            if action == "kill_trial":
                os.kill(target, signal.SIGKILL)
            else:
                action_target.kill()
        self.log.events[action] += 1

    def actions(self) -> list[str]:
        """The strikes possible now."""
        found = []
        if self._targets("kill_worker"):
            found.append("kill_worker")
        if self._targets("kill_driver"):
            found.append("kill_driver")
        if self._running_trial_pids():
            found.append("kill_trial")
        if (
            self.postgres is not None
            and self._db_back_at is None
            and self.postgres.running
            and time.monotonic() - self._db_up_since >= DB_UP_MIN_S
        ):
            found.append("stop_db")
        return found

    def _targets(self, action: str) -> list:
        if action == "kill_trial":
            return self._running_trial_pids()
        session = action == "kill_driver"
        markers = self._markers()
        return [
            p for p in self.processes if p.session == session and p.settled(self.settle, markers)
        ]

    def _markers(self) -> list[tuple[int, float]]:
        """(pid, time written) of every trial's worker file: which process trained it."""
        found = []
        for marker in RunDir(self.run_dir).path.glob("trials/*/worker.json"):
            try:
                found.append((json.loads(marker.read_text())["pid"], marker.stat().st_mtime))
            except (OSError, ValueError, KeyError):
                continue  # being written
        return found

    def _running_trial_pids(self) -> list[int]:
        """Ray worker processes training a trial now (the markers of trials whose process is
        not one of the supervised ones, and still alive)."""
        own = {p.proc.pid for p in self.processes if p.proc is not None}
        if not any(p.session for p in self.processes):
            return []  # workers are killed as a whole ("kill_worker")
        return sorted({pid for pid, _ in self._markers() if pid not in own and pid_alive(pid)})

    def _trials_done(self) -> int:
        if self.postgres is not None and not self.postgres.running:
            return -1
        try:
            if self._storage is None:
                self._storage = make_storage(self.storage_url)
            study = optuna.load_study(study_name=RUN_NAME, storage=self._storage)
            return count_done(study.get_trials(deepcopy=False))
        except Exception:  # not created yet, or the database is restarting
            self._storage = None
            return -1


@dataclass
class Outcome:
    """The end state of a chaos run: counts, and every broken promise (empty: passed)."""

    trials: int = 0  # trials in the study
    counted: int = 0
    complete: int = 0
    failed: int = 0
    retried: int = 0
    given_up: int = 0  # failed, not retried, with its reason
    problems: list[str] = field(default_factory=list)


def check_run(run_dir: Path, *, storage_url: str, n_trials: int) -> Outcome:
    """Compare the end state of a run with the promises of the module docstring."""
    out = Outcome()
    study = optuna.load_study(study_name=RUN_NAME, storage=make_storage(storage_url))
    trials = study.get_trials(deepcopy=False)
    out.trials = len(trials)
    numbers = [t.number for t in trials]
    if sorted(numbers) != list(range(len(trials))):
        twice = [n for n, k in Counter(numbers).items() if k > 1]
        out.problems.append(f"trial numbers are not 0..{len(trials) - 1}: repeated {twice}")
    retried_as: dict[int, list[int]] = {}
    for t in trials:
        # A retry queued twice whose later copy was skipped unevaluated is one retry.
        if RETRY_ATTR in t.user_attrs and DUPLICATE_ATTR not in t.user_attrs:
            retried_as.setdefault(t.user_attrs[RETRY_ATTR], []).append(t.number)
    retried = set(retried_as)
    out.retried = len(retried)
    out.counted = sum(counted(t, retried) for t in trials)
    out.complete = sum(t.state == TrialState.COMPLETE for t in trials)
    out.failed = sum(t.state == TrialState.FAIL for t in trials)
    if out.counted != n_trials:
        out.problems.append(f"{out.counted} trials count towards n_trials, not {n_trials}")
    unfinished = [(t.number, t.state.name) for t in trials if not t.state.is_finished()]
    if unfinished:
        out.problems.append(f"trials left unfinished: {unfinished}")
    twice = [n for n, retries in retried_as.items() if len(retries) > 1]
    if twice:
        out.problems.append(f"trials retried more than once each time: {twice}")
    # A candidate evaluated twice is work done twice (or a lost result): among the trials that
    # count, every candidate once.
    evaluated = Counter(
        json.dumps(t.user_attrs.get("candidate"), sort_keys=True)
        for t in trials
        if counted(t, retried)
    )
    repeats = [c for c, k in evaluated.items() if k > 1]
    if repeats:
        out.problems.append(f"{len(repeats)} candidate(s) evaluated by more than one trial")
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in retried:
            # Given up with its reason (e.g. asked by a Ray driver killed before Tune's
            # checkpoint: no Tune trial will run it, and the budget takes another candidate).
            out.given_up += 1
            if not t.user_attrs.get("fail_reason"):
                out.problems.append(f"trial {t.number} failed without a reason or a retry")
    # What the files say against what the study says.
    run = RunDir(run_dir)
    table = pd.read_csv(run.trials_table)
    expected = trials_dataframe(study)
    if list(table["number"]) != list(expected["number"]) or list(table["state"]) != list(
        expected["state"]
    ):
        out.problems.append("trials.csv does not hold the study's final trials")
    objectives = load_config(run.config_file).objectives()
    front = pd.read_csv(run.front_table)
    recomputed = pareto_front(table, objectives)
    if sorted(front["number"]) != sorted(recomputed["number"]):
        out.problems.append(
            f"pareto.csv holds trials {sorted(front['number'])}; trials.csv's front is "
            f"{sorted(recomputed['number'])}"
        )
    out.problems += _commands_work(run_dir, front)
    return out


def _commands_work(run_dir: Path, front: pd.DataFrame) -> list[str]:
    """Run the commands that read a run folder; the failures, one line each."""
    problems = []
    trial = str(int(front["number"].iloc[0])) if len(front) else "0"
    export_dir = run_dir.parent / "chaos-export"
    commands = [
        ["pareto", str(run_dir)],
        ["report", str(run_dir), "--out", str(run_dir.parent / "chaos-report")],
        ["export", str(run_dir), "--trial", trial, "--out", str(export_dir)],
    ]
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "autocompress.cli", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            problems.append(f"`autocompress {args[0]}` failed: " + " | ".join(tail))
    return problems


def run_chaos(
    backend: str,
    *,
    root: Path,
    n_trials: int,
    workers: int,
    mean_gap: float,
    seed: int,
    postgres: LocalPostgres | None,
    trial_seconds: float,
    settle: float = 10.0,
    milestones: list[tuple[float, str]] = (),
    timeout: float = 3600,
) -> tuple[ChaosLog, Outcome]:
    """One chaos run of ``backend`` ("workers" or "ray") in ``root``, trials of about
    ``trial_seconds``; the study lives on ``postgres`` (required for workers; without it the Ray
    run uses its run folder's SQLite and the database is not stopped)."""
    root.mkdir(parents=True, exist_ok=True)
    runs = root / "runs"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    if postgres is None and backend == "workers":
        raise ValueError("The workers backend needs a PostgreSQL server.")
    storage = postgres.url if postgres is not None else None
    table = root / "table.json"
    config = chaos_config(
        n_trials=n_trials,
        workers=workers,
        backend=backend,
        storage=storage,
        table=table,
        seconds=trial_seconds,
    )
    write_table(config, table)
    # The teacher is trained once, before the chaos: what is under test is the search, and on a
    # loaded machine a teacher trained by workers that keep being killed may never finish.
    prepare_setup(parse_config(config), runs / RUN_NAME)
    config_file = root / "chaos.yaml"
    config_file.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "autocompress.cli"]
    if backend == "workers":
        command = [*cli, "worker", str(config_file), "--runs-dir", str(runs)]
        processes = [Process(f"worker{i}", command, logs, session=False) for i in range(workers)]
    else:
        command = [*cli, "search", str(config_file), "--runs-dir", str(runs)]
        processes = [Process("driver", command, logs, session=True)]
    run_dir = runs / RUN_NAME
    url = storage or RunDir(run_dir).study_url
    log = ChaosLog()
    chaos = Chaos(
        processes,
        storage_url=url,
        n_trials=n_trials,
        rng=random.Random(seed),
        mean_gap=mean_gap,
        settle=settle,
        postgres=postgres,
        run_dir=run_dir,
        log=log,
        milestones=milestones,
    )
    try:
        chaos.run(timeout=timeout)
    finally:
        for process in processes:
            if process.alive():
                process.kill()
        (logs / "chaos.log").write_text("\n".join(log.trace) + "\n")
    return log, check_run(run_dir, storage_url=url, n_trials=n_trials)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["workers", "ray", "both"], default="both")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument(
        "--mean-gap", type=float, default=2.0, help="mean seconds between strikes (0: none)"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds a process lives before it may be hit"
    )
    parser.add_argument("--trial-seconds", type=float, default=1.0, help="simulated trial time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C: the finally blocks stop the
    # processes and the PostgreSQL server this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = args.out or Path(tempfile.mkdtemp(prefix="chaos-"))
    backends = ["workers", "ray"] if args.backend == "both" else [args.backend]
    failed = False
    for backend in backends:
        postgres = LocalPostgres()
        try:
            postgres.init()
            log, outcome = run_chaos(
                backend,
                root=root / backend,
                n_trials=args.trials,
                workers=args.workers,
                mean_gap=args.mean_gap,
                seed=args.seed,
                postgres=postgres,
                trial_seconds=args.trial_seconds,
                settle=args.settle,
            )
        finally:
            postgres.close()
        events = ", ".join(f"{k} {v}" for k, v in sorted(log.events.items())) or "none"
        print(
            f"{backend}: {args.trials} trials, {args.workers} workers, {log.seconds:.0f} s; "
            f"strikes: {events}; crashes: {len(log.crashes)}"
        )
        print(
            f"  study: {outcome.trials} trials, {outcome.counted} count, {outcome.complete} "
            f"complete, {outcome.failed} failed ({outcome.retried} retried, {outcome.given_up} "
            "given up with their reason)"
        )
        for crash in log.crashes:
            print("  crash: " + crash.replace("\n", "\n    "))
        for problem in outcome.problems:
            print(f"  PROBLEM: {problem}")
        print("  passed" if not outcome.problems else "  FAILED")
        failed |= bool(outcome.problems)
    print(f"run folders and logs: {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
