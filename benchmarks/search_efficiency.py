"""Search efficiency: hypervolume vs trials and vs time, random search vs NSGA-II vs ours.

    python benchmarks/search_efficiency.py [--quick | --space large] [--jobs J] [--seeds N]
                                           [--n-trials T] [--cache FILE] [--ceiling] [--sample N]

A tabular benchmark (as NAS-Bench does): a joint space small enough to enumerate (small_cnn on
digits: 2 widths per conv, weight bits {2, 4, 8} per layer, pruning {0, 0.5} per conv: 432
candidates; ``--space large``: weight bits {2, 3, 4, 8}, pruning {0, 0.25, 0.5}: 2304
candidates, ~35 min to train) is trained ONCE, every candidate the way a search trains it
(QAT + distillation from the teacher, ``train.epochs`` epochs, one cosine schedule), with its
validation accuracy after every epoch and the seconds of every epoch recorded (cached in
``--cache``). The reference front is the front of all candidates.

Each search then runs the project's real ``Objective`` (Optuna sampler, define-by-run space,
analytic pricing on cortex_a72, constraints, ``search.early_stopping``'s rung table,
``search.prescreen``'s predictor, the n_trials accounting) with one change: training is replaced
by a lookup of the recorded accuracy curve. Time is the recorded training seconds of the epochs a
trial really trains plus the measured wall time of everything else (sampling, pricing, the
predictor), so the figures are what the same search would take on this machine.

Two-stage methods search with the 1-epoch short fine-tune (``train.epochs: 1``; each candidate's
is also recorded) and then fine-tune in full the front of the short accuracies (what
``autocompress refit RUN --epochs N`` does after a real search); their figures
after n trials count the n short fine-tunes plus that refit, and the hypervolume is the refit
front's.

Printed per method (several seeds, medians): hypervolume (% of the reference) after N trials;
trials, full fine-tunes (epochs / train.epochs) and seconds needed to reach 95% of the reference
hypervolume; and the ratio to random search. Then the cheap-evaluator figure: Kendall tau of the
accuracy after e epochs against the full fine-tune, with the speed-up in candidates per CPU-hour.
With ``--ceiling``, what better accuracy estimates would buy: the greedy proposal loop run with
estimates known in hindsight (another seed's fine-tune, a forest fitted on all other candidates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from scipy.stats import kendalltau

from autocompress.compression.apply import build_compressed
from autocompress.config import parse_config
from autocompress.core import hypervolume, nadir_reference, non_dominated_mask
from autocompress.evaluators import Evaluator, TaskMetrics, TrialContext
from autocompress.evaluators.early_stopping import EarlyStoppingTrainEvaluator, RungRecord
from autocompress.evaluators.simulated import table_key
from autocompress.evaluators.supernet import SupernetConfig, SupernetEvaluator, get_supernet
from autocompress.evaluators.train import TrainEvaluator, evaluate_accuracy
from autocompress.search.objective import TrialObjective
from autocompress.search.refit import refit_order
from autocompress.search.samplers import make_sampler
from autocompress.search.setup import (
    SearchSetup,
    evaluator_context,
    make_evaluator,
    prepare_setup,
)
from autocompress.search.study import count_done
from autocompress.spaces import Candidate
from autocompress.spaces.sampling import enumerate_candidates

TARGET = 0.95
# Plain search: the project's efficiency features (on by default) turned off.
PLAIN = {"early_stopping": {"enabled": False}, "surrogate": {"enabled": False}}
OBJECTIVES = ["accuracy", "latency_ms", "size_kb"]


SPACES = {  # name: (widths, w_bits, prune_ratios)
    "quick": ([16], [2, 8], [0.0, 0.5]),
    "small": ([16, 32], [2, 4, 8], [0.0, 0.5]),
    "large": ([16, 32], [2, 3, 4, 8], [0.0, 0.25, 0.5]),
}


def base_config(*, space: str, epochs: int) -> dict[str, Any]:
    widths, w_bits, prune_ratios = SPACES[space]
    return {
        "name": "search-efficiency",
        "seed": 0,
        "data": {"dataset": "digits", "val_fraction": 0.25, "batch_size": 64},
        "space": {
            "family": "small_cnn",
            "arch": {
                "depths": [2],
                "widths": widths,
                "kernel_sizes": [3],
                "strides": [1, 2],
            },
            "w_bits": w_bits,
            "a_bits": [8],
            "prune_ratios": prune_ratios,
        },
        "teacher": {"epochs": 15},
        "train": {"epochs": epochs, "lr": 0.005, "device": "cpu"},
        "hardware": {"profile": "analytic", "device": "cortex_a72"},
        "search": {"objectives": OBJECTIVES, "save_models": False, "population_size": 16},
    }


key = table_key  # the simulated evaluator reads this script's table (evaluator: simulated)


# ---------------------------------------------------------------- the table
def build_table(setup: SearchSetup, candidates: list[Candidate], cache: Path) -> dict[str, dict]:
    """Accuracy after every epoch, seconds of every epoch and hardware cost of each candidate."""
    table: dict[str, dict] = json.loads(cache.read_text()) if cache.is_file() else {}
    data, evaluator = setup.data, setup.evaluator
    todo = [c for c in candidates if key(c) not in table]
    start = time.perf_counter()
    for i, candidate in enumerate(todo):
        model = build_compressed(
            candidate,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            teacher_state=setup.teacher_state,
        )
        hw = setup.profile.profile(model, input_shape=data.input_shape)
        curve, seconds = [], []
        tick = time.perf_counter()

        def record(epoch: int, val_loader, model=model, curve=curve, seconds=seconds) -> None:
            nonlocal tick
            seconds.append(time.perf_counter() - tick)  # the epoch, not its evaluation
            curve.append(evaluate_accuracy(model, val_loader, device=evaluator.device)[0])
            model.train()
            tick = time.perf_counter()

        # The search's own fine-tune (one schedule over all epochs), scored after every epoch.
        evaluator.fine_tune(model, after_epoch=record)
        table[key(candidate)] = {
            "curve": curve,
            "epoch_s": seconds,
            "latency_ms": hw.latency_ms,
            "size_kb": hw.size_bytes / 1024,
        }
        if (i + 1) % 25 == 0 or i + 1 == len(todo):
            cache.write_text(json.dumps(table))
            rate = (time.perf_counter() - start) / (i + 1)
            print(f"  trained {i + 1}/{len(todo)} ({rate:.2f} s each)", flush=True)
    return table


def _context(setup: SearchSetup, config, *, teacher=None):
    """The evaluator context of ``config`` on the setup's data and space, on the CPU."""
    return evaluator_context(
        config,
        data=setup.data,
        space=setup.space,
        device=torch.device("cpu"),
        teacher=teacher,
        run_dir=None,
    )


def train_evaluator(setup: SearchSetup, *, config=None, teacher=None, epochs=None):
    """The run's QAT + distillation evaluator (``config`` defaults to the setup's)."""
    context = _context(setup, config or setup.config, teacher=teacher)
    return TrainEvaluator.from_context(context, epochs=epochs)


def add_short_finetunes(setup: SearchSetup, table: dict[str, dict], cache: Path) -> None:
    """Each candidate's 1-epoch short fine-tune (its own cosine schedule; ``train.epochs: 1``):
    accuracy and seconds, for the two-stage methods (cached in the table)."""
    evaluator = train_evaluator(setup, teacher=setup.evaluator.teacher, epochs=1)
    todo = [k for k, row in table.items() if "short" not in row]
    for i, k in enumerate(todo):
        candidate = Candidate.from_dict(json.loads(k))
        model = build_compressed(
            candidate,
            num_classes=setup.data.num_classes,
            input_shape=setup.data.input_shape,
            teacher_state=setup.teacher_state,
        )
        tick = time.perf_counter()
        seconds: list[float] = []
        # Timed like the table's epochs: the training, not the validation pass.
        metrics = evaluator.fine_tune(
            model,
            after_epoch=lambda *_, tick=tick, seconds=seconds: seconds.append(
                time.perf_counter() - tick
            ),
        )
        table[k]["short"], table[k]["short_s"] = metrics.accuracy, seconds[0]
        if (i + 1) % 100 == 0 or i + 1 == len(todo):
            cache.write_text(json.dumps(table))
            print(f"  short fine-tunes {i + 1}/{len(todo)}", flush=True)


def build_table_in_processes(
    raw: dict[str, Any], run_dir: Path, candidates: list[Candidate], cache: Path, *, jobs: int
) -> None:
    """``build_table`` and ``add_short_finetunes`` split over ``jobs`` processes (one thread each),
    each caching its share in a file of its own (so an interrupted build resumes), merged into
    ``cache``. The processes load the teacher the caller trained in ``run_dir``."""
    table: dict[str, dict] = json.loads(cache.read_text()) if cache.is_file() else {}
    todo = [c for c in candidates if key(c) not in table or "short" not in table[key(c)]]
    if not todo:
        return
    shards = [cache.with_name(f"{cache.stem}.part{i}.json") for i in range(jobs)]
    for i, shard in enumerate(shards):
        if not shard.is_file():  # a shard file left by an interrupted build is its progress
            # Rows the cache holds without a short fine-tune are not trained again.
            known = {key(c): table[key(c)] for c in todo[i::jobs] if key(c) in table}
            shard.write_text(json.dumps(known))
    # spawn, not fork: a forked child of a process that already ran torch can hang in OpenMP.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [
            pool.submit(_build_shard, raw, run_dir, [c.to_dict() for c in todo[i::jobs]], shard)
            for i, shard in enumerate(shards)
        ]
        for future in futures:
            future.result()
    for shard in shards:
        table.update(json.loads(shard.read_text()))
    cache.write_text(json.dumps(table))
    for shard in shards:
        shard.unlink()


def _build_shard(raw: dict[str, Any], run_dir: Path, todo: list[dict], shard: Path) -> None:
    torch.set_num_threads(1)
    setup = prepare_setup(parse_config(raw), run_dir)
    table = build_table(setup, [Candidate.from_dict(c) for c in todo], shard)
    add_short_finetunes(setup, table, shard)


class TabularEvaluator(Evaluator):
    """The run's evaluator with training replaced by the recorded curve. With early stopping
    on, the candidate goes through the run's real rung table at the same epochs."""

    def __init__(
        self, table: dict[str, dict], base: Evaluator, epochs: int, *, short: bool = False
    ) -> None:
        self.table = table
        self.base = base
        self.epochs = epochs
        self.short = short  # the 1-epoch short fine-tune's accuracy (two-stage search)
        self.trained_epochs: dict[int, int] = {}

    def evaluate(self, model, candidate) -> TaskMetrics:
        raise NotImplementedError("the search calls evaluate_trial")

    def evaluate_trial(self, model, candidate, *, context: TrialContext) -> TaskMetrics:
        row = self.table[key(candidate)]
        self.trained_epochs[context.number] = self.epochs
        if self.short:
            return TaskMetrics(accuracy=row["short"], loss=0.0, epochs=1, train_seconds=0.0)
        if isinstance(self.base, EarlyStoppingTrainEvaluator):
            costs = self.base.cost_tuple(context.costs)
            for rung in self.base.table.rungs:
                if rung >= self.epochs:
                    break
                self.trained_epochs[context.number] = rung
                record = RungRecord(trial=context.number, score=row["curve"][rung - 1], costs=costs)
                self.base.table.judge(rung, record)  # raises CandidateStopped
            self.trained_epochs[context.number] = self.epochs
        return TaskMetrics(
            accuracy=row["curve"][-1], loss=0.0, epochs=self.epochs, train_seconds=0.0
        )


# ---------------------------------------------------------------- one search
def run_one(
    setup: SearchSetup, table: dict, *, method: dict, seed: int, n_trials: int
) -> dict[str, list]:
    """Run one search; per counted trial: HV fraction, full fine-tunes and seconds so far."""
    raw = setup.config.model_dump(mode="json")
    raw["search"].update(method["search"], n_trials=n_trials)
    raw["seed"] = seed
    two_stage = method.get("two_stage", False)
    if two_stage:
        raw["train"]["epochs"] = 1
    config = parse_config(raw)
    epochs = setup.config.train.epochs  # a full fine-tune's, the unit of the "full" column
    evaluator = TabularEvaluator(
        table, make_evaluator(config, _context(setup, config)), config.train.epochs, short=two_stage
    )
    objective = TrialObjective(dataclasses.replace(setup, config=config, evaluator=evaluator))
    study = optuna.create_study(
        directions=[o.direction for o in config.objectives()],
        sampler=make_sampler(config, seed=seed),
    )
    if hasattr(evaluator.base, "table"):  # rung records in this study, as a real run keeps them
        from autocompress.evaluators.early_stopping import OptunaRungStore

        evaluator.base.table.store = OptunaRungStore(study)
    history: dict[str, list] = {"hv": [], "full": [], "seconds": [], "trials": []}
    points: list[list[float]] = []
    full, seconds = 0.0, 0.0
    callbacks = objective.callbacks()  # search.surrogate's proposer, as run_search adds it
    while count_done(study.get_trials(deepcopy=False)) < n_trials:
        tick = time.perf_counter()
        finished: list[optuna.trial.FrozenTrial] = []
        study.optimize(
            objective,
            n_trials=1,
            catch=(Exception,),
            callbacks=[*callbacks, lambda _, t, sink=finished: sink.append(t)],
        )
        trial = finished[0]  # not study.trials[-1]: the proposer may have queued one since
        seconds += time.perf_counter() - tick  # sampling, pricing, predictor: really spent
        trained = evaluator.trained_epochs.get(trial.number, 0)
        if trained:
            row = table[key(Candidate.from_dict(trial.user_attrs["candidate"]))]
            seconds += row["short_s"] if two_stage else sum(row["epoch_s"][:trained])
            full += trained / epochs
        if trial.state == optuna.trial.TrialState.COMPLETE:
            points.append(list(trial.values))
        if trial.state == optuna.trial.TrialState.FAIL:
            raise RuntimeError(f"trial failed: {trial.user_attrs.get('fail_reason')}")
        if trial.user_attrs.get("skipped"):
            history["skipped"] = history.get("skipped", 0) + 1
            continue  # not a counted trial
        history["trials"].append(len(history["hv"]) + 1)
        history["hv"].append(_hv(points) / REFERENCE["hv"])
        history["full"].append(full)
        history["seconds"].append(seconds)
        history.setdefault("keys", []).append(
            key(Candidate.from_dict(trial.user_attrs["candidate"]))
        )
    if not two_stage:
        return history
    return refit_front(history, table, slack=method.get("slack", 0.0), budget=method.get("budget"))


def refit_front(
    history: dict[str, list], table: dict, *, slack: float = 0.0, budget: int | None = None
) -> dict[str, list]:
    """A two-stage search's history: after each short-fine-tune trial n, the front of the short
    accuracies (and the candidates within ``slack`` accuracy of it, as ``refit --slack``) is
    fine-tuned in full (the table's full fine-tune), and its hypervolume is that of the full
    accuracies; with ``budget``, only the ``budget`` of them ``refit --budget`` picks (greedy
    hypervolume order of the short values). Trials, full fine-tunes and seconds include those
    refits."""
    out: dict[str, list] = {"hv": [], "full": [], "seconds": [], "trials": []}
    directions = REFERENCE["directions"]
    orders: dict[tuple[int, ...], list[int]] = {}  # the front changes on few trials: order once
    for n in range(1, len(history["keys"]) + 1):
        rows = [table[k] for k in history["keys"][:n]]
        short = np.array([[r["short"], r["latency_ms"], r["size_kb"]] for r in rows])
        near = non_dominated_mask(short, directions, slack=[slack, 0.0, 0.0])
        front = [r for r, on in zip(rows, near, strict=True) if on]
        if budget is not None:
            members = tuple(np.flatnonzero(near).tolist())
            if members not in orders:
                orders[members] = refit_order(short[near], directions)
            front = [front[i] for i in orders[members][:budget]]
        refit = {id(r): r for r in front}.values()  # a candidate is refit once
        full_points = [[r["curve"][-1], r["latency_ms"], r["size_kb"]] for r in refit]
        out["hv"].append(_hv(full_points) / REFERENCE["hv"])
        out["trials"].append(n + len(refit))
        out["full"].append(history["full"][n - 1] + len(refit))
        out["seconds"].append(history["seconds"][n - 1] + sum(sum(r["epoch_s"]) for r in refit))
    return out


REFERENCE: dict[str, Any] = {}


def _hv(points: list[list[float]]) -> float:
    if not points:
        return 0.0
    return hypervolume(np.array(points), REFERENCE["directions"], REFERENCE["point"])


def reach(history: dict[str, list], axis: str) -> float:
    for hv, x in zip(history["hv"], history[axis], strict=True):
        if hv >= TARGET:
            return float(x)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32-candidate smoke run")
    parser.add_argument(
        "--space",
        choices=["small", "large"],
        default="small",
        help="small: 432 candidates (~5 min to train); large: 2304 (~35 min)",
    )
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=9, help="train.epochs of a full fine-tune")
    parser.add_argument("--cache", type=Path, default=None, help="table JSON (reused if present)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes training the table (1 thread each; the recorded seconds are per process)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also train the table with another seed (~5 min, cached) and print what a perfect "
        "predictor would need: the greedy search with hindsight accuracies",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help="candidates scored by the cheap evaluators, short fine-tunes and supernet (0: skip)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated substrings: run only the methods whose name holds one "
        "(random search always runs: it is the baseline of the ratios)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.sample is None:
        args.sample = 8 if args.quick else 60
    seeds = args.seeds or (2 if args.quick else 5)
    space_name = "quick" if args.quick else args.space
    n_trials = args.n_trials or {"quick": 24, "small": 150, "large": 300}[space_name]
    raw = base_config(space=space_name, epochs=args.epochs)
    config = parse_config(raw)
    cache = args.cache or Path(tempfile.gettempdir()) / (
        f"autocompress-search-efficiency-{'full' if space_name == 'small' else space_name}"
        f"-e{args.epochs}.json"
    )

    with tempfile.TemporaryDirectory() as tmp:
        setup = prepare_setup(config, Path(tmp))
        candidates = enumerate_candidates(setup.space)
        print(f"space: {len(candidates)} candidates; teacher {setup.teacher_metrics}")
        t = time.perf_counter()
        if args.jobs > 1:
            build_table_in_processes(raw, Path(tmp), candidates, cache, jobs=args.jobs)
        table = build_table(setup, candidates, cache)
        print(f"table ready in {time.perf_counter() - t:.0f} s (cache {cache})")
        add_short_finetunes(setup, table, cache)
        table = {key(c): table[key(c)] for c in candidates}

        values = np.array([[r["curve"][-1], r["latency_ms"], r["size_kb"]] for r in table.values()])
        directions = [o.direction for o in config.objectives()]
        front = non_dominated_mask(values, directions)
        # Reference point: the reference front's worst value of each objective, pushed out by
        # 10% of the front's range (the nadir convention). A fixed accuracy of 0 would let any
        # dozen random candidates score 95%: most of this space trains to 80-96%.
        REFERENCE["directions"] = directions
        REFERENCE["point"] = nadir_reference(values[front], directions).tolist()
        REFERENCE["hv"] = hypervolume(values, directions, REFERENCE["point"])
        full_s = float(np.mean([sum(r["epoch_s"]) for r in table.values()]))
        print(
            f"reference front: {int(front.sum())} of {len(values)} candidates; a full fine-tune "
            f"({args.epochs} epochs) takes {full_s:.2f} s on 1 thread"
        )

        methods = {
            "random": {"search": {"sampler": "random", **PLAIN}},
            "nsga2": {"search": {"sampler": "nsga2", **PLAIN}},
            "nsga2 + early stop": {"search": {"sampler": "nsga2", "surrogate": {"enabled": False}}},
            "nsga2 + early stop + prescreen": {
                "search": {
                    "sampler": "nsga2",
                    "surrogate": {"enabled": False},
                    "prescreen": {"enabled": True},
                }
            },
            "tpe + early stop": {"search": {"sampler": "tpe", "surrogate": {"enabled": False}}},
            "nsga2 + surrogate": {
                "search": {"sampler": "nsga2", "early_stopping": {"enabled": False}}
            },
            "ours: default (nsga2+es+surrogate)": {"search": {"sampler": "nsga2"}},
        }
        # Two-stage: a search with the 1-epoch short fine-tune, then a refit of its front.
        short_searches = {"random": {"sampler": "random", **PLAIN}, "default": {"sampler": "nsga2"}}
        refits = {
            "1 epoch + refit": {},
            "refit --slack 0.02": {"slack": 0.02},
            "refit --budget 8": {"budget": 8},
        }
        for refit, options in refits.items():
            for label, search in short_searches.items():
                methods[f"two-stage: {label}, {refit}"] = {
                    "search": search,
                    "two_stage": True,
                    **options,
                }
        if args.methods:
            wanted = [part.strip() for part in args.methods.split(",") if part.strip()]
            methods = {
                name: method
                for name, method in methods.items()
                if name == "random" or any(part in name for part in wanted)
            }
        setup_info = (setup.space, setup.data, setup)
        results: dict[str, list[dict]] = {}
        for name, method in methods.items():
            t = time.perf_counter()
            results[name] = [
                run_one(setup, table, method=method, seed=seed, n_trials=n_trials)
                for seed in range(seeds)
            ]
            print(f"  {name}: {seeds} seeds x {n_trials} trials in {time.perf_counter() - t:.0f} s")

    checkpoints = [c for c in (10, 25, 50, 100, 150, 200) if c <= n_trials]
    print()
    print(f"hypervolume (% of the reference front's), median of {seeds} seeds")
    print(f"{'method':<38}" + "".join(f"{f'@{c}':>8}" for c in checkpoints))
    for name, runs in results.items():
        cells = [statistics.median(r["hv"][c - 1] for r in runs) for c in checkpoints]
        print(f"{name:<38}" + "".join(f"{100 * v:>7.1f}%" for v in cells))

    print()
    print(
        f"to reach {TARGET:.0%} of the reference hypervolume (median; n/a: not within {n_trials})"
    )
    columns = [("trials", 8), ("x rand", 8), ("full FT", 9), ("x rand", 8), ("seconds", 9)]
    columns += [("x rand", 8), ("reached", 9)]
    print(f"{'method':<38}" + "".join(f"{name:>{width}}" for name, width in columns))
    base: dict[str, float] = {}
    for name, runs in results.items():
        cells = []
        for axis in ("trials", "full", "seconds"):
            reached = [reach(r, axis) for r in runs]
            value = statistics.median(reached) if not any(np.isnan(reached)) else float("nan")
            base.setdefault(axis, value)
            cells.append((value, value / base[axis]))
        ok = sum(not np.isnan(reach(r, "trials")) for r in runs)
        print(
            f"{name:<38}"
            + "".join(
                f"{_fmt(v):>8}{_fmt(x, 2):>8}" if i != 1 else f"{_fmt(v):>9}{_fmt(x, 2):>8}"
                for i, (v, x) in enumerate(cells)
            )
            + f"{ok:>6}/{len(runs)}"
        )
        skipped = [r.get("skipped", 0) for r in runs]
        if any(skipped):
            print(f"{'':<38}(prescreen skipped {statistics.median(skipped):.0f} trials, median)")

    if args.ceiling:
        ceiling_figures(setup, table, cache=cache.with_name(cache.stem + "-seed1.json"))
    if args.sample:
        short_finetune_figures(setup_info, table, n=args.sample, seed=0)
        supernet_figures(setup_info, table, full_s=full_s, n=args.sample, seed=0)

    print()
    print("rung accuracy: the full fine-tune's accuracy after e of its epochs (mid-schedule)")
    final = [r["curve"][-1] for r in table.values()]
    print(f"{'epochs':>6}{'Kendall tau':>13}{'candidates/CPU-h vs full':>26}")
    for e in range(1, args.epochs + 1):
        tau = kendalltau([r["curve"][e - 1] for r in table.values()], final).statistic
        speed = full_s / float(np.mean([sum(r["epoch_s"][:e]) for r in table.values()]))
        print(f"{e:>6}{tau:>13.3f}{speed:>25.1f}x")


def ceiling_figures(setup: SearchSetup, table: dict, *, cache: Path) -> None:
    """What the proposal loop could reach with better accuracy estimates: trials to 95% of the
    reference HV for the greedy that always trains the untried candidate adding the most
    hypervolume at the estimated accuracy (its costs are exact), with estimates known in
    hindsight: the full fine-tune with another seed (no predictor can beat re-training), a
    random forest on the surrogate's features cross-validated over all other candidates, and the
    zero-shot proxy alone mapped to accuracy by an isotonic fit on every candidate."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import KFold

    from autocompress.evaluators.accuracy_predictor import AccuracyPredictor

    candidates = [Candidate.from_dict(json.loads(k)) for k in table]
    config = setup.config.model_copy(update={"seed": 1})
    torch.manual_seed(1)
    other = build_table(
        dataclasses.replace(
            setup,
            evaluator=train_evaluator(setup, config=config, teacher=setup.evaluator.teacher),
        ),
        candidates,
        cache,
    )
    objective = TrialObjective(setup)
    proxy = np.array([objective.proxy_accuracy(c) for c in candidates])
    truth = np.array([[r["curve"][-1], r["latency_ms"], r["size_kb"]] for r in table.values()])

    extra = [{"proxy_accuracy": p} for p in proxy]
    cross_validated = np.zeros(len(candidates))
    for train, test in KFold(10, shuffle=True, random_state=0).split(candidates):
        predictor = AccuracyPredictor(
            num_classes=setup.data.num_classes, input_shape=setup.data.input_shape
        )
        predictor.fit(
            [candidates[i] for i in train],
            truth[train, 0].tolist(),
            extra=[extra[i] for i in train],
        )
        cross_validated[test] = predictor.predict(
            [candidates[i] for i in test], extra=[extra[i] for i in test]
        )
    estimates = {
        "full fine-tune, other seed": np.array([other[k]["curve"][-1] for k in table]),
        "forest, cross-validated on all others": cross_validated,
        "zero-shot proxy, isotonic in hindsight": IsotonicRegression(out_of_bounds="clip")
        .fit(proxy, truth[:, 0])
        .predict(proxy),
    }
    print()
    print("ceiling: greedy on hindsight accuracy estimates (costs exact), trials to 95% HV")
    print(f"{'estimate':<42}{'Kendall tau':>12}{'trials':>8}")
    for label, estimate in estimates.items():
        tau = kendalltau(estimate, truth[:, 0]).statistic
        print(f"{label:<42}{tau:>12.3f}{_greedy_trials(truth, estimate):>8}")


def _greedy_trials(truth: np.ndarray, estimate: np.ndarray) -> int:
    """Trials the greedy needs: each step trains the untried row whose estimated accuracy (at its
    true costs) adds the most hypervolume to the front of the rows trained so far."""
    directions, point = REFERENCE["directions"], REFERENCE["point"]
    tried: list[int] = []
    untried = list(range(len(truth)))
    while not tried or _hv(truth[tried].tolist()) < TARGET * REFERENCE["hv"]:
        front = truth[tried][non_dominated_mask(truth[tried], directions)] if tried else None
        base = hypervolume(front, directions, point) if tried else 0.0
        gains = []
        for i in untried:
            row = truth[i].copy()
            row[0] = estimate[i]
            rows = row[None] if front is None else np.vstack([front, row])
            gains.append(hypervolume(rows, directions, point) - base)
        tried.append(untried.pop(int(np.argmax(gains))))
    return len(tried)


def _sample(table: dict, *, n: int, seed: int) -> list[Candidate]:
    keys = list(table)
    order = np.random.default_rng(seed).permutation(len(keys))[:n]
    return [Candidate.from_dict(json.loads(keys[i])) for i in order]


def short_finetune_figures(setup_info, table: dict, *, n: int, seed: int) -> None:
    """Kendall tau against the table's full fine-tunes of: the full fine-tune again with another
    seed (the noise ceiling: no evaluator can rank better than the reference repeats itself),
    and short fine-tunes of e epochs with their own cosine schedule (``train.epochs: e``); each
    timed end to end (``TrainEvaluator.evaluate``: training and the validation pass)."""
    _, data, setup = setup_info
    sample = _sample(table, n=n, seed=seed)
    reference = [table[key(c)]["curve"][-1] for c in sample]
    config = setup.config
    rows = []
    for label, epochs, run_seed in (
        (f"full fine-tune ({config.train.epochs} epochs), other seed", config.train.epochs, 1),
        ("short fine-tune, 1 epoch", 1, 0),
        ("short fine-tune, 2 epochs", 2, 0),
    ):
        evaluator = train_evaluator(
            setup,
            config=config.model_copy(update={"seed": run_seed}),
            teacher=setup.evaluator.teacher,
            epochs=epochs,
        )
        scores, tick = [], time.perf_counter()
        for index, candidate in enumerate(sample):
            torch.manual_seed(1000 * run_seed + index)
            model = build_compressed(
                candidate,
                num_classes=data.num_classes,
                input_shape=data.input_shape,
                teacher_state=setup.teacher_state,
            )
            scores.append(evaluator.evaluate(model, candidate).accuracy)
        per = (time.perf_counter() - tick) / len(sample)
        rows.append((label, kendalltau(scores, reference).statistic, per))
    full_per = rows[0][2]
    print()
    print(f"cheap evaluators on {n} sampled candidates, Kendall tau vs the table's full fine-tune")
    print(f"{'evaluator':<44}{'tau':>7}{'s/cand':>9}{'cand/CPU-h vs full':>20}")
    for label, tau, per in rows:
        print(f"{label:<44}{tau:>7.3f}{per:>9.3f}{full_per / per:>19.1f}x")


def supernet_figures(setup_info, table: dict, *, full_s: float, n: int, seed: int) -> None:
    """Kendall tau of the weight-sharing evaluator against the table's full fine-tunes on ``n``
    sampled candidates, and its candidates per CPU-hour (supernet training included)."""
    space, data, _ = setup_info
    sample = _sample(table, n=n, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.perf_counter()
        supernet, _ = get_supernet(
            space,
            data=data,
            config=SupernetConfig(seed=seed),
            directory=Path(tmp),
            device=torch.device("cpu"),
        )
        train_s = time.perf_counter() - tick
    evaluator = SupernetEvaluator(supernet=supernet, data=data, device=torch.device("cpu"))
    scores, tick = [], time.perf_counter()
    for candidate in sample:
        model = build_compressed(
            candidate, num_classes=data.num_classes, input_shape=data.input_shape
        )
        scores.append(evaluator.evaluate(model, candidate).accuracy)
    eval_s = (time.perf_counter() - tick) / len(sample)
    tau = kendalltau(scores, [table[key(c)]["curve"][-1] for c in sample]).statistic
    print()
    print(
        f"weight-sharing supernet ({n} sampled candidates): Kendall tau {tau:.3f} vs full "
        f"fine-tune; supernet trained in {train_s:.0f} s, {eval_s:.2f} s per candidate vs "
        f"{full_s:.2f} s"
    )
    for count in (150, 1000):
        speed = count * full_s / (train_s + count * eval_s)
        print(f"  candidates/CPU-h vs full fine-tune over {count} candidates: {speed:.1f}x")


def _fmt(value: float, digits: int = 0) -> str:
    if np.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}" if digits else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


if __name__ == "__main__":
    main()
