"""Simulated scaling (``python benchmarks/scaling.py --simulate``): the search's coordination layer
at 1-64 workers, with trials that sleep instead of training.

Every trial runs the real search code (sampler, pricing on the hardware profile, the surrogate's
proposals, early-stopping rungs, the study storage, heartbeats, Ray Tune's scheduling, result
writing); only the training is replaced by the ``simulated`` evaluator, which answers from a
table and sleeps the candidate's recorded training time x ``--time-scale``.

Workers run as ``autocompress worker`` does (``run_worker``), ``--procs`` processes at most, the
workers beyond that as threads of those processes (``search.n_jobs``: each thread asks, prices,
proposes and tells on its own, as a process would). A process importing torch takes ~0.5-0.9 GB,
so 64 processes do not fit a 23 GB machine shared with others. The Ray backend runs one Ray
actor process per concurrent trial, so ``--ray-max`` caps it.

Measured per configuration: trials per hour (completions after the first N, as ``scaling.py``
counts them) and the parallel efficiency rate(N) / (N x rate(1)); the same in the steady state
(after the first N completions and before the last N, the drain in which workers run out of
trials one by one) with ``busy``, the share of the N workers' time inside evaluations there;
utilisation (seconds the workers spent in the evaluator / (N x wall seconds), start-up and drain
included), and per trial the orchestration time of each step, timed by wrapping the real
functions in this process (or each worker process):
``ask`` (create the trial, relative sampling), ``price`` (suggest, build and price the candidate,
the duplicate check), ``tell`` and ``proposal`` (the surrogate's callback), each with the part
spent in the storage, and the sampler's own time per trial.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------- timing the real code
# trial number -> step -> seconds; keyed by trial number because the Ray driver interleaves
# trials in one thread, and worker threads each run one trial at a time.
_TIMES: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
_LOCK = threading.Lock()
_INSTRUMENTED: list[type] = []  # the sampler class, once the steps are wrapped
_LOCAL = threading.local()  # storage seconds of the step running in this thread; nesting depth


def _add(number: int, step: str, seconds: float) -> None:
    with _LOCK:
        _TIMES[number][step] += seconds


def _timed_step(step: str, number_of):
    """Wrap a function: its wall time and the storage time inside it go to the trial's record."""

    def wrap(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            outer = getattr(_LOCAL, "storage", None)
            _LOCAL.storage = 0.0
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                storage, _LOCAL.storage = _LOCAL.storage, outer
                if outer is not None:
                    _LOCAL.storage = outer + storage
            number = number_of(args, kwargs, result)
            if number is not None:
                _add(number, step, elapsed)
                _add(number, f"{step}_storage", storage)
            return result

        return timed

    return wrap


def _timed_storage(fn):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        depth = getattr(_LOCAL, "depth", 0)
        _LOCAL.depth = depth + 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _LOCAL.depth = depth
            if depth == 0 and getattr(_LOCAL, "storage", None) is not None:
                _LOCAL.storage += time.perf_counter() - start

    return timed


def _number(value: Any) -> int | None:
    return getattr(value, "number", None)


def instrument(sampler_class: type) -> None:
    """Wrap the steps of a trial (see the module docstring) in this process (once)."""
    if _INSTRUMENTED:
        return
    _INSTRUMENTED.append(sampler_class)
    from optuna.study import _optimize

    from autocompress.evaluators.simulated import SimulatedEvaluator
    from autocompress.search.objective import TrialObjective
    from autocompress.search.surrogate import Proposer

    optuna.Study.ask = _timed_step("ask", lambda a, k, r: r.number)(optuna.Study.ask)
    optuna.Study.tell = _timed_step("tell", lambda a, k, r: _trial_number(a[0], a[1]))(
        optuna.Study.tell
    )
    _optimize._tell_with_warning = _timed_step("tell", lambda a, k, r: _number(k.get("trial")))(
        _optimize._tell_with_warning
    )
    TrialObjective.price = _timed_step("price", lambda a, k, r: _number(a[1]))(TrialObjective.price)
    Proposer.__call__ = _timed_step("proposal", lambda a, k, r: _number(a[2]))(Proposer.__call__)
    SimulatedEvaluator.evaluate_trial = _timed_step(
        "evaluate", lambda a, k, r: k["context"].number
    )(SimulatedEvaluator.evaluate_trial)
    _wrap_evaluate_on_stop(SimulatedEvaluator)
    for name in ("infer_relative_search_space", "sample_relative", "sample_independent"):
        method = getattr(sampler_class, name)
        setattr(sampler_class, name, _timed_sampler(method))
    from optuna.storages import JournalStorage, RDBStorage

    from autocompress.search import storage

    # The subclasses' own methods too: PatientRDBStorage's retrying wrappers call the originals.
    # Optuna's cache in front of an RDBStorage calls these private ones instead of the public.
    cached = {"_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id"}
    cached.add("_write_batch")  # a trial's writes in one transaction (storage.one_transaction)
    for storage_class in (
        RDBStorage,
        JournalStorage,
        storage.HeartbeatRDBStorage,
        storage.PatientRDBStorage,
        storage.HeartbeatJournalStorage,
    ):
        for name, member in vars(storage_class).items():
            if callable(member) and (not name.startswith("_") or name in cached):
                setattr(storage_class, name, _timed_storage(member))


def _trial_number(study: optuna.Study, trial: Any) -> int | None:
    return trial if isinstance(trial, int) else _number(trial)


def _timed_sampler(fn):
    @functools.wraps(fn)
    def timed(self, study, trial, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(self, study, trial, *args, **kwargs)
        finally:
            _add(trial.number, "sampler", time.perf_counter() - start)

    return timed


def _wrap_evaluate_on_stop(evaluator_class: type) -> None:
    # A stopped trial leaves evaluate_trial by an exception: its sleep must count all the same.
    timed = evaluator_class.evaluate_trial

    @functools.wraps(timed)
    def evaluate_trial(self, model, candidate, *, context):
        start = time.perf_counter()
        try:
            return timed(self, model, candidate, context=context)
        except Exception:
            _add(context.number, "evaluate", time.perf_counter() - start)
            raise

    evaluator_class.evaluate_trial = evaluate_trial


def dump_times(path: Path) -> None:
    with _LOCK:
        path.write_text(json.dumps({str(n): dict(steps) for n, steps in _TIMES.items()}))


# ---------------------------------------------------------------- a worker process
def worker_main(argv: list[str]) -> None:
    """``simulated_scaling.py worker CONFIG STORAGE N_TRIALS RUNS_DIR OUT GO``: a timed
    ``run_worker`` that starts when the file GO appears (so that the processes start together)."""
    config_file, storage, n_trials, runs_dir, out, go = argv
    import torch

    from autocompress.config import parse_config
    from autocompress.search import run_worker
    from autocompress.search.samplers import make_sampler

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = parse_config(yaml.safe_load(Path(config_file).read_text()))
    instrument(type(make_sampler(config, seed=0)))
    Path(out).with_suffix(".ready").write_text("")
    while not Path(go).exists():
        time.sleep(0.05)
    try:
        run_worker(config, storage=storage, n_trials=int(n_trials), runs_dir=runs_dir)
    finally:
        dump_times(Path(out))


# ---------------------------------------------------------------- configurations
def search_config(
    base: dict,
    *,
    name: str,
    table: Path,
    time_scale: float,
    n_trials: int,
    seed: int = 0,
    surrogate: bool = True,
) -> dict:
    """``base`` (a search_efficiency config) with the simulated evaluator and the defaults of
    the search (NSGA-II, early stopping, surrogate unless ``surrogate`` is False)."""
    config = json.loads(json.dumps(base))
    config.update(name=name, seed=seed)
    config["evaluator"] = {
        "name": "simulated",
        "options": {"table": str(table), "time_scale": time_scale},
    }
    config["search"] = {
        "objectives": base["search"]["objectives"],
        "population_size": base["search"]["population_size"],
        "n_trials": n_trials,
        "save_models": False,
        "worker": {"threads": 1},
        "surrogate": {"enabled": surrogate},
    }
    return config


def run_workers(
    config: dict, *, workers: int, procs: int, storage: str, root: Path
) -> tuple[optuna.Study, dict[int, dict[str, float]], float]:
    """``workers`` simulated workers as ``min(workers, procs)`` processes; the study, the step
    times of every trial and the time the processes were released."""
    from autocompress.search.storage import make_storage

    processes = min(workers, procs)
    if workers % processes:
        raise ValueError(f"--procs must divide the worker count {workers}. Got {procs}.")
    threads = workers // processes
    config = json.loads(json.dumps(config))
    config["search"]["n_jobs"] = threads
    per_process = config["search"]["n_trials"] // processes
    run = root / config["name"]
    config_file = root / f"{config['name']}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    go = root / f"{config['name']}.go"
    outs = [root / f"{config['name']}.times{i}.json" for i in range(processes)]
    command = [sys.executable, str(Path(__file__).resolve()), "worker", str(config_file), storage]
    command += [str(per_process), str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = [
        subprocess.Popen(
            [*command, str(out), str(go)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for out in outs
    ]
    while not all(out.with_suffix(".ready").exists() for out in outs):
        if any(p.poll() for p in running):
            break
        time.sleep(0.2)
    released = time.time()
    go.write_text("")
    for proc in running:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"worker failed: {err[-3000:]}")
    times: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for out in outs:  # a process may time a step of another's trial (e.g. a stale trial's tell)
        for number, steps in json.loads(out.read_text()).items():
            for step, seconds in steps.items():
                times[int(number)][step] += seconds
    study = optuna.load_study(study_name=config["name"], storage=make_storage(storage))
    del run
    return study, times, released


def run_ray(
    config: dict, *, workers: int, root: Path
) -> tuple[optuna.Study, dict[int, dict[str, float]], float]:
    """The Ray backend with ``workers`` concurrent trials, timed in this (the driver) process."""
    from autocompress.config import parse_config
    from autocompress.search import run_search
    from autocompress.search.samplers import make_sampler

    config = json.loads(json.dumps(config))
    config["search"].update(backend="ray", ray={"workers": workers, "cpus_per_trial": 1})
    instrument(type(make_sampler(parse_config(config))))
    _TIMES.clear()
    released = time.time()
    result = run_search(parse_config(config), runs_dir=root)
    return result.study, {n: dict(s) for n, s in _TIMES.items()}, released


# ---------------------------------------------------------------- figures
def evaluated(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that were evaluated (completed or stopped early), by completion time."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE
        or (t.state == TrialState.PRUNED and "stopped_epochs" in t.user_attrs)
    ]
    return sorted(trials, key=lambda t: t.datetime_complete)


def throughput(
    study: optuna.Study, times: dict[int, dict[str, float]], *, workers: int, released: float
) -> dict[str, float]:
    trials = evaluated(study)
    done = [t.datetime_complete.timestamp() for t in trials]

    def busy(trial: optuna.trial.FrozenTrial) -> float:
        # The Ray driver does not see its actors' evaluations: their trial's duration_s then.
        return times.get(trial.number, {}).get("evaluate", trial.user_attrs.get("duration_s", 0))

    rate = steady = steady_busy = float("nan")
    if len(done) > workers:
        rate = 3600 * (len(done) - workers) / (done[-1] - done[workers - 1])
    # Steady state: after the first wave of N trials, before the last N completions (the drain,
    # when workers run out of trials one by one and idle while the others finish).
    first, last = workers - 1, len(done) - workers
    if last > first:
        lo, hi = done[first], done[last]
        steady = 3600 * (last - first) / (hi - lo)
        # Each evaluation ends just before its trial completes: its overlap with the window.
        inside = sum(
            max(0.0, min(end, hi) - max(end - busy(t), lo))
            for t, end in zip(trials, done, strict=True)
        )
        steady_busy = inside / (workers * (hi - lo))
    utilisation = float("nan")
    if done:
        utilisation = sum(busy(t) for t in trials) / (workers * (done[-1] - released))
    return {
        "trials": len(trials),
        "rate": rate,
        "steady": steady,
        "steady_busy": steady_busy,
        "utilisation": utilisation,
        **overhead(times),
    }


STEPS = ("ask", "price", "tell", "proposal")


def overhead(times: dict[int, dict[str, float]], *, priced: bool = True) -> dict[str, float]:
    """Median milliseconds per trial: the steps, their sum, storage within them, the sampler.
    ``priced``: count only trials that were priced (a search's, not a no-op objective's)."""
    rows = [
        steps
        for steps in times.values()
        if "ask" in steps and "tell" in steps and ("price" in steps or not priced)
    ]
    if not rows:
        return {}
    found = {}
    for step in STEPS:
        found[step] = 1000 * statistics.median(r.get(step, 0.0) for r in rows)
    found["total"] = 1000 * statistics.median(sum(r.get(s, 0.0) for s in STEPS) for r in rows)
    found["storage"] = 1000 * statistics.median(
        sum(r.get(f"{s}_storage", 0.0) for s in STEPS) for r in rows
    )
    found["sampler"] = 1000 * statistics.median(r.get("sampler", 0.0) for r in rows)
    found["p90"] = 1000 * float(
        np.percentile([sum(r.get(s, 0.0) for s in STEPS) for r in rows], 90)
    )
    return found


def print_row(label: str, workers: int, found: dict[str, float], one: dict[str, float]) -> None:
    efficiency = found["rate"] / (workers * one["rate"])
    steady = found["steady"] / (workers * one["steady"])
    print(
        f"  {label:10s} {workers:3d} {found['trials']:5d} {found['rate']:9.0f} {efficiency:7.1%}"
        f" {found['steady']:9.0f} {steady:7.1%} {found['steady_busy']:7.1%}"
        f" {found['utilisation']:7.1%} {found.get('total', float('nan')):8.1f}"
        f" {found.get('p90', float('nan')):7.1f}"
        + "".join(f" {found.get(s, float('nan')):7.1f}" for s in (*STEPS, "storage", "sampler")),
        flush=True,
    )


HEADER = (
    f"  {'backend':10s} {'N':>3s} {'done':>5s} {'trials/h':>9s} {'effic.':>7s}"
    f" {'steady/h':>9s} {'effic.':>7s} {'busy':>7s} {'util.':>7s}"
    f" {'ovh ms':>8s} {'p90':>7s}" + "".join(f" {s:>7s}" for s in (*STEPS, "storage", "sampler"))
)


# ---------------------------------------------------------------- hypervolume vs trials
def hv_history(study: optuna.Study, reference: dict[str, Any]) -> list[float]:
    """Fraction of the reference hypervolume after each evaluated trial, in completion order."""
    from autocompress.core import hypervolume

    points: list[list[float]] = []
    history = []
    for trial in evaluated(study):
        if trial.state == TrialState.COMPLETE:
            points.append(list(trial.values))
        hv = 0.0
        if points:
            hv = hypervolume(np.array(points), reference["directions"], reference["point"])
        history.append(hv / reference["hv"])
    return history


def first_reaching(history: list[float], target: float) -> int | None:
    return next((i + 1 for i, hv in enumerate(history) if hv >= target), None)


def sequential_seconds(study: optuna.Study, table: dict, *, time_scale: float) -> list[float]:
    """Wall seconds after each evaluated trial of a one-worker run made with ``time_scale`` 0,
    had it slept: its measured completion times plus the sleeps before each trial."""
    from autocompress.evaluators.simulated import table_key
    from autocompress.spaces import Candidate

    trials = evaluated(study)
    start = min(t.datetime_start for t in study.get_trials(deepcopy=False)).timestamp()
    slept, found = 0.0, []
    for trial in trials:
        row = table[table_key(Candidate.from_dict(trial.user_attrs["candidate"]))]
        epochs = trial.user_attrs.get("stopped_epochs", len(row["epoch_s"]))
        slept += time_scale * sum(row["epoch_s"][:epochs])
        found.append(trial.datetime_complete.timestamp() - start + slept)
    return found


# ---------------------------------------------------------------- the benchmark
def main(args: argparse.Namespace, *, local_postgres) -> None:
    """``scaling.py --simulate`` (see the module docstrings); ``local_postgres`` is
    scaling.py's."""
    from autocompress.config import parse_config
    from autocompress.evaluators.simulated import synthetic_table
    from autocompress.search.samplers import make_sampler
    from autocompress.search.setup import prepare_setup
    from autocompress.search.storage import make_storage
    from autocompress.spaces.sampling import enumerate_candidates

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import search_efficiency

    parts = set(args.parts.split(","))
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.1f} (1 min)", flush=True)
    root = Path(tempfile.mkdtemp(prefix="scaling-sim-"))
    with local_postgres() as postgres:
        url = args.postgres_url or postgres
        if "throughput" in parts:
            base = search_efficiency.base_config(space="large", epochs=9)
            config = parse_config(base)
            teacher_run = root / "teacher-run"
            setup = prepare_setup(config, teacher_run)
            # A synthetic table of the 2304-candidate space: hundreds of trials per setting would
            # exhaust the 432 candidates of the trained table (repeats are skipped, not run).
            table = root / "large.json"
            table.write_text(
                json.dumps(synthetic_table(enumerate_candidates(setup.space), epochs=9))
            )
            print(
                f"throughput: trials sleep 9 epochs x {args.time_scale} s x (1 - mean prune / 2)"
                " unless stopped early; NSGA-II + early stopping, surrogate "
                f"{'on' if args.throughput_surrogate else 'off'}",
                flush=True,
            )
            print(HEADER, flush=True)
            counts = [int(n) for n in args.sim_workers.split(",")]
            for backend in args.sim_backends.split(","):
                one = None  # the first row: the rates the others are compared with
                for workers in counts:
                    if backend == "ray" and workers > args.ray_max:
                        print(f"  {backend:10s} {workers:3d}  skipped (--ray-max {args.ray_max})")
                        continue
                    name = f"{backend}{workers}"
                    n_trials = max(args.sim_trials * workers, 8)
                    run_config = search_config(
                        base,
                        name=name,
                        table=table,
                        time_scale=args.time_scale,
                        n_trials=n_trials,
                        surrogate=args.throughput_surrogate,
                    )
                    shutil.copytree(teacher_run / "teacher", root / name / "teacher")
                    if backend == "ray":
                        # The study on PostgreSQL too: the run folder's default is SQLite.
                        run_config["search"]["storage"] = url
                        found = _ray_throughput(run_config, workers=workers, root=root)
                    else:
                        storage = url if backend == "postgresql" else f"journal:{root}/{name}.log"
                        if storage is None:
                            print(f"  {backend}: no PostgreSQL server (--postgres-url)")
                            break
                        study, times, released = run_workers(
                            run_config,
                            workers=workers,
                            procs=args.procs,
                            storage=storage,
                            root=root,
                        )
                        found = throughput(study, times, workers=workers, released=released)
                    one = one or found
                    print_row(backend, workers, found, one)
        if "overhead" in parts:
            print(
                "orchestration at 1,000 and 10,000 trials (no-op objective, NSGA-II; median ms "
                "per trial over 100 trials run after the study was padded to that size):",
                flush=True,
            )
            config = parse_config({**search_efficiency.base_config(space="large", epochs=9)})
            instrument(type(make_sampler(config)))
            for name, storage in (
                ("postgresql", url),
                ("journal", f"journal:{root}/overhead.log"),
            ):
                if storage is not None:
                    padded_overhead(name, make_storage(storage), config, sizes=(1000, 10000))
        if "hv" in parts:
            hypervolume_figures(args, root=root, storage=url, search_efficiency=search_efficiency)
    shutil.rmtree(root, ignore_errors=True)


def padded_overhead(name: str, storage, config, *, sizes: tuple[int, ...]) -> None:
    """Per-trial ask/tell/storage/sampler times of 100 no-op trials (scaling.py's ``NoOp``) run
    on a study of each size: 100 trials run, then copies of them added (``add_trials``: far
    faster than running them) up to the size. The copies keep their NSGA-II generation, so the
    sampler sees as many trials per generation as the size brings: the storage and the sampler
    see the study's size."""
    from scaling import NoOp

    from autocompress.search.samplers import make_sampler

    study = optuna.create_study(
        storage=storage,
        directions=["maximize", "minimize", "minimize"],
        sampler=make_sampler(config),
    )
    study.optimize(NoOp(), n_trials=100)
    seed_trials = study.get_trials(deepcopy=True)
    for size in sizes:
        missing = size - 100 - len(study.get_trials(deepcopy=False))
        copies = [seed_trials[i % len(seed_trials)] for i in range(max(missing, 0))]
        study.add_trials(copies)
        _TIMES.clear()
        ends = [time.perf_counter()]
        study.optimize(
            NoOp(), n_trials=100, callbacks=[lambda *_, ends=ends: ends.append(time.perf_counter())]
        )
        per_trial = 1000 * np.diff(ends)  # ask to the end of tell, and the loop between trials
        found = overhead(dict(_TIMES), priced=False)
        print(
            f"  {name:10s} at {size:5d} trials: {np.median(per_trial):6.1f} ms per trial "
            f"(median; mean {per_trial.mean():6.1f}); ask {found['ask']:5.1f}, tell "
            f"{found['tell']:5.1f}, storage {found['storage']:5.1f}, sampler per ask "
            f"{found['sampler']:5.2f}",
            flush=True,
        )


def _ray_throughput(config: dict, *, workers: int, root: Path) -> dict[str, float]:
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        study, times, released = run_ray(config, workers=workers, root=root)
    finally:
        ray.shutdown()
    return throughput(study, times, workers=workers, released=released)


def hypervolume_figures(args, *, root: Path, storage: str | None, search_efficiency) -> None:
    """Trials and seconds to 95% of the reference hypervolume: one worker against
    ``--hv-workers`` simulated workers, on the recorded table (the default search)."""
    from autocompress.config import parse_config
    from autocompress.core import hypervolume, nadir_reference, non_dominated_mask
    from autocompress.search.setup import prepare_setup

    target = search_efficiency.TARGET
    table_path = args.table or Path(tempfile.gettempdir()) / (
        "autocompress-search-efficiency-full-e9.json"
    )
    base = search_efficiency.base_config(space="small", epochs=9)
    teacher_run = root / "hv-teacher"
    setup = prepare_setup(parse_config(base), teacher_run)
    if not table_path.is_file() or len(json.loads(table_path.read_text())) < 432:
        from autocompress.spaces.sampling import enumerate_candidates

        print(f"training the table {table_path} (once)", flush=True)
        search_efficiency.build_table(setup, enumerate_candidates(setup.space), table_path)
    table = json.loads(table_path.read_text())
    values = np.array([[r["curve"][-1], r["latency_ms"], r["size_kb"]] for r in table.values()])
    directions = ["maximize", "minimize", "minimize"]
    front = values[non_dominated_mask(values, directions)]
    point = nadir_reference(front, directions)
    reference = {
        "directions": directions,
        "point": point,
        "hv": hypervolume(values, directions, point),
    }
    if storage is None:
        storage = f"journal:{root}/hv.log"
    print(
        f"hypervolume: default search on the recorded table ({len(table)} candidates), "
        f"{args.hv_trials} trials, trials x {args.time_scale} of their recorded seconds",
        flush=True,
    )
    print(f"  {'workers':>7s} {'seed':>4s} {'trials to 95%':>14s} {'s to 95%':>9s} {'HV@end':>7s}")
    for workers, scale in ((1, 0.0), (args.hv_workers, args.time_scale)):
        for seed in range(args.hv_seeds):
            name = f"hv{workers}-{seed}"
            config = search_config(
                base,
                name=name,
                table=table_path,
                time_scale=scale,
                n_trials=args.hv_trials,
                seed=seed,
            )
            shutil.copytree(teacher_run / "teacher", root / name / "teacher")
            study, times, released = run_workers(
                config, workers=workers, procs=args.procs, storage=storage, root=root
            )
            history = hv_history(study, reference)
            if workers == 1:  # run without sleeping: its wall time had it slept
                seconds = sequential_seconds(study, table, time_scale=args.time_scale)
            else:
                seconds = [t.datetime_complete.timestamp() - released for t in evaluated(study)]
            reached = first_reaching(history, target)
            secs = f"{seconds[reached - 1]:9.0f}" if reached else f"{'n/a':>9s}"
            steps = overhead(times)
            print(
                f"  {workers:7d} {seed:4d} {reached or 'n/a':>14} {secs} {history[-1]:7.1%}"
                f"   median ms per trial: orchestration {steps['total']:.0f}, of which proposal "
                f"{steps['proposal']:.0f}, price {steps['price']:.0f}, storage "
                f"{steps['storage']:.0f}",
                flush=True,
            )


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    worker_main(sys.argv[2:])
