"""How distributed search scales: trials per hour against workers, and the orchestration overhead
per trial of each study storage.

    python benchmarks/scaling.py [--workers 1,2,4] [--trials-per-worker 6] [--no-ray]
                                 [--overhead-trials 100,1000] [--postgres-url URL]
    python benchmarks/scaling.py --simulate [--sim-workers 1,4,16,32,64] [--sim-trials 3]
                                 [--procs 8] [--time-scale 2] [--ray-max 16] [--table FILE]

1. Throughput: a fixed tiny search (digits, small CNN, 20 QAT epochs per trial) run by 1, 2,
   4, ... workers (up to the cores here), as ``autocompress worker`` processes sharing a journal
   file and, if Ray is installed, as the Ray backend with that many concurrent trials. Rate =
   steady-state trials per hour, from the trials' completion times once every worker has
   finished its first trial (so process start-up and teacher loading are left out, alike for
   both backends). Parallel efficiency = rate(N) / (N x rate(1)).
2. Overhead: a no-op objective (the same number of categorical suggestions, user attributes and
   a constraint as a tiny trial, NSGA-II) run in one process against SQLite, a journal file and
   PostgreSQL (``--postgres-url``, or a throwaway local server when Debian's postgresql package
   is installed): milliseconds per trial over the first 100 trials and over trials 901-1000.

3. ``--simulate``: the coordination layer at 1-64 workers, with trials that sleep their recorded
   training time instead of training (see ``simulated_scaling.py``): throughput, parallel
   efficiency and per-trial orchestration time of workers on PostgreSQL and on a journal file
   and of the Ray backend; the overhead of 1. at 1,000 and 10,000 trials with the sampler's time
   per ask; and the hypervolume 16 simulated workers reach per trial and per second against one
   worker, on the recorded table of ``search_efficiency.py`` (``--table``; trained first if
   missing, ~10 min on one core).

The figures depend on the machine: the script prints the core count and load average with them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import yaml

from autocompress.config import parse_config
from autocompress.search.samplers import make_sampler
from autocompress.search.setup import prepare_setup
from autocompress.search.storage import make_storage, one_transaction

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # chaos.py beside this file
    sys.path.insert(0, str(HERE))
from chaos import TINY_DIGITS, LocalPostgres  # noqa: E402

SEARCH = {
    "name": "scaling",
    "seed": 0,
    **TINY_DIGITS,  # deep-copied where used
    "teacher": {"epochs": 4, "lr": 0.01},
    "train": {"epochs": 20, "lr": 0.01},  # about 1 s per trial on one core
    "hardware": {"profile": "analytic", "device": "cortex_a72"},
    # One torch thread per trial for both backends (Ray: cpus_per_trial=1), so N trials at once
    # use N cores.
    "search": {"n_trials": 8, "sampler": "random", "save_models": False, "worker": {"threads": 1}},
}


def steady_rate(study: optuna.Study, workers: int) -> float:
    """Trials per hour between the workers' first completions and the last completion."""
    done = sorted(
        t.datetime_complete.timestamp()
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    )
    if len(done) <= workers:
        return float("nan")
    return 3600 * (len(done) - workers) / (done[-1] - done[workers - 1])


def worker_throughput(workers: int, per_worker: int, root: Path, teacher: Path) -> float:
    config = copy.deepcopy(SEARCH)
    config["name"] = f"workers{workers}"
    run_dir = root / config["name"]
    shutil.copytree(teacher, run_dir / "teacher")  # every setting starts with a trained teacher
    config_file = root / f"{config['name']}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    storage = f"journal:{run_dir}/journal.log"
    command = [sys.executable, "-m", "autocompress.cli", "worker", str(config_file)]
    command += ["--storage", storage, "--n-trials", str(per_worker), "--runs-dir", str(root)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"worker failed: {err[-2000:]}")
    study = optuna.load_study(study_name=config["name"], storage=make_storage(storage))
    return steady_rate(study, workers)


def ray_throughput(workers: int, per_worker: int, root: Path, teacher: Path) -> float:
    from autocompress.search import run_search

    config = copy.deepcopy(SEARCH)
    config["name"] = f"ray{workers}"
    config["search"].update(n_trials=workers * per_worker, backend="ray", ray={"workers": workers})
    shutil.copytree(teacher, root / config["name"] / "teacher")
    result = run_search(parse_config(config), runs_dir=root)
    return steady_rate(result.study, workers)


def print_throughput(name: str, rates: dict[int, float]) -> None:
    base = rates[min(rates)]
    for workers, rate in rates.items():
        efficiency = rate / (workers * base)
        rate_text = f"{rate:8.0f} trials/h"
        print(f"  {name:8s} {workers:2d} worker(s): {rate_text}   efficiency {efficiency:6.1%}")


class NoOp:
    """A trial's orchestration without its work: as many suggestions and attributes as the tiny
    search's trials (7 layers' bits and ratios + arch), one constraint, three objective values."""

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        # In the transactions of TrialObjective: the suggestion, the price, the result.
        with one_transaction(trial):
            trial.suggest_categorical("arch.width0", [8, 16])
            trial.suggest_categorical("arch.width1", [8, 16])
            for layer in range(3):
                trial.suggest_categorical(f"l{layer}.w_bits", [2, 4, 8])
                trial.suggest_categorical(f"l{layer}.a_bits", [4, 8])
                trial.suggest_categorical(f"l{layer}.prune", [0.0, 0.5])
            trial.set_user_attr("candidate", 1.0)
        with one_transaction(trial):
            for key in ("latency_ms", "energy_mj", "size_kb", "feasible"):
                trial.set_user_attr(key, 1.0)
            trial.set_constraint("max_size_kb", -1.0)
        with one_transaction(trial):
            trial.set_user_attr("trained", 1.0)
        return 0.5, 1.0, 1.0


def overhead_ms(storage: optuna.storages.BaseStorage, sizes: list[int]) -> dict[int, float]:
    """ms per trial over the 100 trials that end at each of ``sizes`` (NSGA-II, 3 objectives)."""
    config = parse_config({**copy.deepcopy(SEARCH), "search": {"sampler": "nsga2"}})
    study = optuna.create_study(
        storage=storage,
        directions=["maximize", "minimize", "minimize"],
        sampler=make_sampler(config),
    )
    found, done = {}, 0
    for size in sorted(sizes):
        window = min(100, size)
        if size - window > done:
            study.optimize(NoOp(), n_trials=size - window - done)
        start = time.perf_counter()
        study.optimize(NoOp(), n_trials=window)
        found[size] = 1000 * (time.perf_counter() - start) / window
        done = size
    return found


@contextlib.contextmanager
def local_postgres() -> Iterator[str | None]:
    """A throwaway PostgreSQL on 127.0.0.1 (``chaos.LocalPostgres``), its URL; or None when no
    server can be started here."""
    try:
        server = LocalPostgres()
    except (FileNotFoundError, LookupError):
        yield None
        return
    try:
        server.init()
    except (RuntimeError, LookupError):
        server.close()
        yield None
        return
    try:
        yield server.url
    finally:
        server.close()


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_workers = ",".join(str(2**k) for k in range(cores.bit_length()) if 2**k <= cores)
    parser.add_argument("--workers", default=default_workers, help="worker counts to measure")
    parser.add_argument("--trials-per-worker", type=int, default=6)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    parser.add_argument("--overhead-trials", default="100,1000")
    parser.add_argument("--postgres-url", default=None, help="default: a throwaway local server")
    parser.add_argument("--skip-throughput", action="store_true")
    simulated = parser.add_argument_group("--simulate")
    simulated.add_argument("--simulate", action="store_true", help="see 3. above")
    simulated.add_argument("--sim-workers", default="1,4,16,32,64")
    simulated.add_argument(
        "--sim-trials",
        type=int,
        default=3,
        help="trials per worker (8 at least in all); the steady state is the middle N x (this - 2)",
    )
    simulated.add_argument("--sim-backends", default="postgresql,journal,ray")
    simulated.add_argument(
        "--procs", type=int, default=8, help="worker processes at most (the rest are threads)"
    )
    simulated.add_argument("--ray-max", type=int, default=16, help="Ray actors at most")
    simulated.add_argument(
        "--time-scale", type=float, default=2.0, help="sleep = recorded training seconds x this"
    )
    simulated.add_argument("--table", type=Path, default=None, help="recorded table (--hv)")
    simulated.add_argument("--hv-workers", type=int, default=16)
    simulated.add_argument("--hv-trials", type=int, default=150)
    simulated.add_argument("--hv-seeds", type=int, default=2)
    simulated.add_argument("--parts", default="throughput,overhead,hv")
    simulated.add_argument(
        "--throughput-surrogate",
        action="store_true",
        help="proposals on in the throughput runs too (seconds of CPU per trial each: more "
        "workers than cores cannot run them)",
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.simulate:
        import simulated_scaling

        simulated_scaling.main(args, local_postgres=local_postgres)
        return

    print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.1f} (1 min)")
    if not args.skip_throughput:
        root = Path(tempfile.mkdtemp(prefix="scaling-"))
        counts = [int(n) for n in args.workers.split(",")]
        teacher_run = root / "teacher-run"
        prepare_setup(parse_config(copy.deepcopy(SEARCH)), teacher_run)
        teacher = teacher_run / "teacher"
        print(f"throughput ({args.trials_per_worker} trials per worker, steady state):")
        rates = {n: worker_throughput(n, args.trials_per_worker, root, teacher) for n in counts}
        print_throughput("workers", rates)
        try:
            import ray
        except ImportError:
            ray = None
            print("  ray: not installed (pip install autocompress[ray])")
        if ray is not None and not args.no_ray:
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            try:
                rates = {
                    n: ray_throughput(n, args.trials_per_worker, root, teacher) for n in counts
                }
            finally:
                ray.shutdown()
            print_throughput("ray", rates)
        shutil.rmtree(root, ignore_errors=True)

    sizes = [int(n) for n in args.overhead_trials.split(",")]
    print("orchestration overhead per trial (no-op objective, NSGA-II, ms):")
    with tempfile.TemporaryDirectory(prefix="scaling-overhead-") as tmp:
        with local_postgres() as started:
            storages = {
                "sqlite": f"sqlite:///{tmp}/study.db",
                "journal": f"journal:{tmp}/journal.log",
                "postgresql": args.postgres_url or started,
            }
            for name, url in storages.items():
                if url is None:
                    print(
                        f"  {name:10s} not available (apt-get install postgresql or --postgres-url)"
                    )
                    continue
                found = overhead_ms(make_storage(url), sizes)
                cells = "   ".join(f"at {size:5d} trials {ms:7.2f}" for size, ms in found.items())
                print(f"  {name:10s} {cells}")
    if cores < 16:
        print(
            f"note: {cores} cores here; the target (>= 90% parallel efficiency at 16 workers on "
            "16 cores) needs a 16-core machine to check."
        )


if __name__ == "__main__":
    main()
