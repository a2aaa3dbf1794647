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
import json
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

from autocompress.config import load_config
from autocompress.core import RunDir, pareto_front
from autocompress.core.trials import RETRY_ATTR, trials_dataframe
from autocompress.search.storage import make_storage
from autocompress.search.study import count_done, counted

RUN_NAME = "chaos"
# How often each strike is chosen, relative to the others possible at the moment: processes die
# more often than the database goes away, and a Ray driver holds the whole run.
STRIKE_WEIGHTS = {"kill_worker": 4, "kill_trial": 4, "kill_driver": 1, "stop_db": 1}


def chaos_config(
    *, n_trials: int, workers: int, backend: str, storage: str, evaluator: dict | None
) -> dict:
    """The run config: the tiny digits search, heartbeats every second, a short grace period
    (the chaos cuts many trials off; each waits that long to be retried)."""
    config = {
        "name": RUN_NAME,
        "seed": 0,
        "data": {"dataset": "digits", "val_fraction": 0.25, "batch_size": 128},
        "space": {
            "family": "small_cnn",
            "arch": {"depths": [2], "widths": [8, 16], "kernel_sizes": [3], "strides": [1, 2]},
            "w_bits": [2, 4, 8],
            "a_bits": [4, 8],
            "prune_ratios": [0.0, 0.5],
        },
        "teacher": {"epochs": 1, "lr": 0.01},
        "train": {"epochs": 1, "lr": 0.01},
        "hardware": {"profile": "analytic", "device": "cortex_a72"},
        "search": {
            "n_trials": n_trials,
            "sampler": "random",
            "objectives": ["accuracy", "latency_ms", "size_kb"],
            "storage": storage,
            "backend": "ray" if backend == "ray" else "optuna",
            "early_stopping": {"enabled": False},
            "worker": {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 5, "threads": 1},
            # Many cheap trials at once: a fraction of a core each.
            "ray": {"workers": workers, "cpus_per_trial": 0.1, "max_failures": 5},
        },
    }
    if evaluator is not None:
        config["evaluator"] = evaluator
    return config


class LocalPostgres:
    """A throwaway PostgreSQL server on 127.0.0.1 that can be stopped (as in a crash) and
    started again on the same port; run as the 'postgres' user when this process is root."""

    def __init__(self, root: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = shutil.which("initdb") or (str(bins[-1]) if bins else None)
        if initdb is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.initdb = initdb
        self.pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        self.root = root
        self.data = root / "data"
        self.as_user: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
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

    def start(self) -> None:
        self.generation += 1
        log = open(self.logs / f"{self.name}-{self.generation}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.session,
        )
        log.close()  # the child holds its own descriptor
        self.killed = False
        self.restart_at = None
        self.clean_exit = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        postgres: LocalPostgres | None,
        run_dir: Path,
        log: ChaosLog,
    ) -> None:
        self.processes = processes
        self.storage_url = storage_url
        self.n_trials = n_trials
        self.rng = rng
        self.mean_gap = mean_gap
        self.postgres = postgres
        self.run_dir = run_dir
        self.log = log
        self._storage = None
        self._db_back_at: float | None = None
        # A process that keeps crashing (a bad config, a bug) would be restarted forever.
        self.max_crashes = 10 + 2 * len(processes)

    def run(self, *, timeout: float) -> None:
        start = time.monotonic()
        for process in self.processes:
            process.start()
        next_event = start + self.rng.expovariate(1 / self.mean_gap)
        next_poll = start
        done = False
        while not done:
            now = time.monotonic()
            if now - start > timeout:
                raise TimeoutError(f"the study did not reach {self.n_trials} trials in time")
            self._supervise(now, restart=True)
            if self._db_back_at is not None and now >= self._db_back_at:
                self.postgres.start()
                self._db_back_at = None
            if now >= next_event:
                self._strike(now)
                next_event = now + self.rng.expovariate(1 / self.mean_gap)
            if now >= next_poll:
                done = self._trials_done() >= self.n_trials
                next_poll = now + 1.0
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
            if restart and process.restart_at is not None and now >= process.restart_at:
                process.start()

    def _strike(self, now: float) -> None:
        actions = self.actions()
        if not actions:
            return
        action = self.rng.choices(actions, weights=[STRIKE_WEIGHTS[a] for a in actions])[0]
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
        if any(p.alive() and not p.session for p in self.processes):
            found.append("kill_worker")
        if any(p.alive() and p.session for p in self.processes):
            found.append("kill_driver")
        if self._running_trial_pids():
            found.append("kill_trial")
        if self.postgres is not None and self._db_back_at is None and self.postgres.running:
            found.append("stop_db")
        return found

    def _targets(self, action: str) -> list:
        if action == "kill_trial":
            return self._running_trial_pids()
        session = action == "kill_driver"
        return [p for p in self.processes if p.alive() and p.session == session]

    def _running_trial_pids(self) -> list[int]:
        """Ray worker processes training a trial now (the markers of trials whose process is
        not one of the supervised ones, and still alive)."""
        own = {p.proc.pid for p in self.processes if p.proc is not None}
        if not any(p.session for p in self.processes):
            return []  # workers are killed as a whole ("kill_worker")
        pids = []
        for marker in RunDir(self.run_dir).path.glob("trials/*/worker.json"):
            try:
                pid = json.loads(marker.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                continue  # being written
            if pid not in own and _alive(pid):
                pids.append(pid)
        return sorted(set(pids))

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Outcome:
    """The end state of a chaos run: counts, and every broken promise (empty: passed)."""

    trials: int = 0  # trials in the study
    counted: int = 0
    complete: int = 0
    failed: int = 0
    retried: int = 0
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
        if RETRY_ATTR in t.user_attrs:
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
            if not t.user_attrs.get("fail_reason"):
                out.problems.append(f"trial {t.number} failed without a reason or a retry")
            elif t.user_attrs.get("interrupted"):
                out.problems.append(f"interrupted trial {t.number} was not retried")
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
    evaluator: dict | None,
    timeout: float = 3600,
) -> tuple[ChaosLog, Outcome]:
    """One chaos run of ``backend`` ("workers" or "ray") in ``root``; the study lives on
    ``postgres`` (required for workers; without it the Ray run uses its run folder's SQLite and
    the database is not stopped)."""
    root.mkdir(parents=True, exist_ok=True)
    runs = root / "runs"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    if postgres is None and backend == "workers":
        raise ValueError("The workers backend needs a PostgreSQL server.")
    storage = postgres.url if postgres is not None else None
    config = chaos_config(
        n_trials=n_trials, workers=workers, backend=backend, storage=storage, evaluator=evaluator
    )
    if storage is None:
        del config["search"]["storage"]
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
        postgres=postgres,
        run_dir=run_dir,
        log=log,
    )
    try:
        chaos.run(timeout=timeout)
    finally:
        for process in processes:
            if process.alive():
                process.kill()
    return log, check_run(run_dir, storage_url=url, n_trials=n_trials)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["workers", "ray", "both"], default="both")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--mean-gap", type=float, default=2.0, help="seconds between strikes")
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
        postgres = LocalPostgres(root / backend / "pg")
        postgres.init()
        try:
            log, outcome = run_chaos(
                backend,
                root=root / backend,
                n_trials=args.trials,
                workers=args.workers,
                mean_gap=args.mean_gap,
                seed=args.seed,
                postgres=postgres,
                evaluator=None,
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
            f"complete, {outcome.failed} failed ({outcome.retried} retried)"
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
