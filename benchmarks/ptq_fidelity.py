"""How well post-training quantization ranks candidates like QAT fine-tuning, and how much faster.

    python benchmarks/ptq_fidelity.py [--config configs/quickstart.yaml | --byo MODEL]
                                      [--candidates 12]
                                      [--set FIELD=VALUE ...] [--runs-dir DIR] [--seed 0]
                                      [--calibration mse] [--no-bias-correction] [--adaround 0]
                                      [--calib-batches 8] [--distill-steps 0 ...]
                                      [--threads 1] [--cheap-epochs 1] [--reference-seeds 1]

Draws ``--candidates`` random candidates of the config's space that fit its hardware budget,
and scores each, each time freshly built from the teacher as the search builds it: with the
``ptq`` evaluator (``--calibration``, bias correction unless turned off, ``--adaround`` steps
per layer, ``--calib-batches``) once per ``--distill-steps`` value (its ``distill_steps``: 0 is
plain PTQ; ``--distill-steps 0 4 8`` compares three), with a short QAT fine-tune of
``--cheap-epochs`` epochs (the other cheap evaluator; 0 leaves it out), and with the ``train``
evaluator (QAT + distillation for ``train.epochs``, no early stopping, no
``ptq_fallback``: the reference). Prints the scores per candidate, the seconds per candidate of
each evaluator, how many candidates each scores per CPU-hour (one thread: wall = CPU time) and
the Kendall tau of each cheap ranking against the reference
(:func:`autocompress.evaluators.supernet.rank_correlation`). ``--reference-seeds K`` (K >= 2)
trains the reference K times per candidate, under K shuffling seeds, and prints how well the
reference ranks like itself (the Kendall tau between its first two seeds: the noise ceiling of
any tau against one reference) and each cheap ranking's tau against the mean of the K
references, the ranking a fine-tune gives once its seed noise is averaged out. ``--set`` overrides
config fields as the CLI's ``--set`` does, e.g. ``--set space.arch.widths=[48]``. The teacher is
trained once into ``--runs-dir`` (default: a temporary folder) and reused from there. Torch
runs on ``--threads`` threads (tiny models train fastest on one, and shared CPUs time steadier).

``--byo MODEL`` (resnet18 or mobilenet_v3_small) measures on a user model instead of a config:
the torchvision network trained on generated digits and the run config of
``benchmarks/byo_baselines.py`` (its default space, ``train`` section and device; the checkpoint
trained once into ``--runs-dir`` and reused from there).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn

from autocompress.config import RunConfig, apply_overrides, load_config, parse_config
from autocompress.core.trials import candidate_summary
from autocompress.evaluators import (
    Evaluator,
    EvaluatorContext,
    TaskMetrics,
    TrainEvaluator,
    create_evaluator,
)
from autocompress.evaluators.supernet import rank_correlation
from autocompress.search import prepare_setup
from autocompress.search.objective import TrialObjective
from autocompress.spaces import Candidate
from autocompress.spaces.sampling import sample_candidates


class Cached(Evaluator):
    """``evaluator``, evaluated once per candidate (the reference, compared with two others)."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.results: dict[str, TaskMetrics] = {}

    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics:
        key = candidate.to_json()
        if key not in self.results:
            self.results[key] = self.evaluator.evaluate(model, candidate)
        return self.results[key]


class Timed(Evaluator):
    """``evaluator`` that records the seconds of each ``evaluate`` call."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.seconds: list[float] = []

    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics:
        start = time.perf_counter()
        metrics = self.evaluator.evaluate(model, candidate)
        self.seconds.append(time.perf_counter() - start)
        return metrics


def within_budget(objective: TrialObjective, n: int, *, seed: int) -> list[Candidate]:
    """``n`` distinct random candidates that fit the budget (the ones a search trains)."""
    chosen: dict[str, Candidate] = {}
    for draw in range(50):
        for candidate in sample_candidates(objective.setup.space, n=4 * n, seed=seed + draw):
            if candidate.to_json() not in chosen and objective.price_candidate(candidate)[1]:
                chosen[candidate.to_json()] = candidate
            if len(chosen) == n:
                return list(chosen.values())
    raise SystemExit(f"Fewer than {n} distinct candidates of the space fit its budget.")


def reseeded_train(context: EvaluatorContext, seed: int) -> TrainEvaluator:
    """The reference under another shuffling seed: same candidates, same initial models (built
    by ``rank_correlation``), the training split drawn in another order."""
    return TrainEvaluator.from_context(dataclasses.replace(context, seed=seed))


def byo_config(model: str, runs_dir: Path) -> RunConfig:
    """``byo_baselines``' run config for ``model``, its checkpoint trained into ``runs_dir``
    unless there."""
    from technique_ablation import byo_module  # this folder is on sys.path, as the script's

    byo_baselines = byo_module()
    args = byo_baselines.build_parser().parse_args(["--reuse-checkpoint"])
    checkpoint = runs_dir / f"{model}.pt"
    accuracy = byo_baselines.train_checkpoint(model, checkpoint, args)
    print(f"checkpoint      {checkpoint}: accuracy {accuracy:.3f}", flush=True)
    return byo_baselines.run_config(model, checkpoint, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--byo", choices=["resnet18", "mobilenet_v3_small"], default=None)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", default="mse")
    parser.add_argument("--no-bias-correction", action="store_true")
    parser.add_argument(
        "--adaround", type=int, default=0, help="AdaRound steps per layer (0: round to nearest)"
    )
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument(
        "--distill-steps",
        type=int,
        nargs="+",
        default=[0],
        help="the ptq evaluator's distill_steps, one ptq column per value (0: plain PTQ)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cheap-epochs", type=int, default=1, help="epochs of the short QAT; 0: leave it out"
    )
    parser.add_argument(
        "--reference-seeds",
        type=int,
        default=1,
        help="train the reference under this many shuffling seeds (>= 2: report its noise "
        "ceiling and each tau against the mean)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="autocompress-ptq-"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = byo_config(args.byo, runs_dir) if args.byo else load_config(args.config)
    data = apply_overrides(base.model_dump(mode="json"), args.overrides)
    config = parse_config(data, source=f"{args.byo or args.config} (with --set)")
    contexts: list[EvaluatorContext] = []

    # Plain QAT: the reference and the short one are fine-tunes only (the search's fallback to
    # the post-training quantized model would mix the ptq score into both).
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"ptq_fallback": False})}
    )

    def train_evaluator(context: EvaluatorContext) -> TrainEvaluator:
        contexts.append(context)
        return TrainEvaluator.from_context(context)  # the full budget: no early stopping

    setup = prepare_setup(config, runs_dir / config.name, evaluator=train_evaluator)
    options = {
        "calibration": args.calibration,
        "bias_correction": not args.no_bias_correction,
        "adaround_iterations": args.adaround,
        "calib_batches": args.calib_batches,
    }
    cheap = {
        ("ptq" if steps == 0 else f"ptq+{steps} st"): Timed(
            create_evaluator("ptq", context=contexts[0], distill_steps=steps, **options)
        )
        for steps in args.distill_steps
    }
    if args.cheap_epochs > 0:
        short = TrainEvaluator.from_context(contexts[0], epochs=args.cheap_epochs)
        cheap[f"qat {args.cheap_epochs} ep"] = Timed(short)
    train = Timed(setup.evaluator)
    reference = Cached(train)
    candidates = within_budget(TrialObjective(setup), args.candidates, seed=args.seed)

    def ranked(evaluator: Evaluator, against: Evaluator):
        return rank_correlation(
            evaluator,
            against,
            candidates,
            num_classes=setup.data.num_classes,
            input_shape=setup.data.input_shape,
            teacher_state=setup.teacher_state,
            seed=args.seed,
        )

    results = {name: ranked(evaluator, reference) for name, evaluator in cheap.items()}
    reseeded = [
        ranked(Cached(reseeded_train(contexts[0], config.seed + k)), reference)
        for k in range(1, args.reference_seeds)
    ]

    teacher = setup.teacher_metrics.get("accuracy", float("nan"))
    print(f"config          {args.byo or args.config} {' '.join(args.overrides)}")
    print(f"teacher         accuracy {teacher:.3f} ({runs_dir / config.name})")
    print(f"ptq options     {options}")
    names = [*cheap, "train"]
    print(f"{'candidate':<60} " + " ".join(f"{n:>9}" for n in names))
    for i, candidate in enumerate(candidates):
        summary = candidate_summary(candidate.to_dict())[:60]
        scores = [r.accuracies[i, 0] for r in results.values()]
        scores.append(next(iter(results.values())).accuracies[i, 1])
        print(f"{summary:<60} " + " ".join(f"{v:9.3f}" for v in scores))
    train_s = statistics.median(train.seconds)
    print(
        f"reference       train, {config.train.epochs} epochs: {train_s:.2f} s / candidate "
        f"(median), {3600 / train_s:.0f} candidates per CPU-hour"
    )
    if reseeded:
        runs = [next(iter(results.values())).accuracies[:, 1]]
        runs += [r.accuracies[:, 0] for r in reseeded]
        reference_mean = np.mean(runs, axis=0)
        print(
            f"reference seeds {len(runs)}: kendall tau of seed 2 against seed 1 "
            f"{reseeded[0].kendall_tau:.2f} (the noise ceiling of a tau against one seed); "
            f"accuracy spread between seeds {np.mean(np.ptp(runs, axis=0)):.3f} on average"
        )
    for name, result in results.items():
        seconds = statistics.median(cheap[name].seconds)
        mean = np.mean(result.accuracies, axis=0)
        against_mean = ""
        if reseeded:
            tau = kendalltau(result.accuracies[:, 0], reference_mean).statistic
            against_mean = f"; against the mean of {len(runs)} reference seeds {tau:.2f}"
        print(
            f"{name:<15} {seconds:.2f} s / candidate, {3600 / seconds:.0f} per CPU-hour "
            f"({train_s / seconds:.1f}x the reference); mean accuracy {mean[0]:.3f} vs "
            f"{mean[1]:.3f}; kendall tau {result.kendall_tau:.2f} (p = {result.p_value:.3f})"
            f"{against_mean}"
        )


if __name__ == "__main__":
    main()
