"""Bring your own model: the searched front against the one-shot recipes a user would otherwise
apply, on the same device profile.

    python benchmarks/byo_baselines.py [--models resnet18 mobilenet_v3_small] [--epochs 3]
                                       [--lr 0.001] [--quick] [--out DIR] [--seed 0]
                                       [--w-bits B ...] [--a-bits B ...] [--prune-ratios R ...]

For each torchvision model (random init, 10 classes) a checkpoint is first trained briefly on
the generated 3x32x32 digits of ``examples/resnet18_checkpoint/digits_rgb.py`` (AdamW + cosine,
then its BatchNorm statistics re-estimated on the training split). That checkpoint is the
teacher of everything below; its training is not counted.

The network is built by this file's ``torchvision_network`` (the run's ``model.factory``):
torchvision's as it is, or with every BatchNorm momentum set to ``--bn-momentum`` when that is
above 0 (e.g. 0.1, PyTorch's default, against MobileNetV3's 0.01). Since the fine-tune
re-estimates BatchNorm statistics at its end (``train.bn_batches``), the network's own momentum
no longer leaves pruned candidates with stale statistics.

Baselines, built with the project's own code: a uniform ``Candidate`` over every Conv2d/Linear
layer of the network (no block dropped), built and compressed as a search trial is
(``TrialObjective.build``: teacher weights inherited, channels pruned by Torch-Pruning's groups,
fake-quant inserted), priced on the run's hardware profile, and scored on the validation split:

- ``int8 PTQ``: w8/a8, no pruning, no training. The activation ranges (an EMA of the observed
  min/max, tracked by the fake-quant layers in train mode) are calibrated on ``--calib-batches``
  training batches with the fake-quant layers in train mode, BatchNorm in eval mode and no
  optimizer step; then evaluated.
- ``4-bit QAT``: w4/a4 (4-bit activations are in the default space), QAT + distillation from the
  checkpoint for ``train.epochs`` epochs with the run's ``TrainEvaluator``.
- ``50% prune + int8``: a 0.5 pruning ratio on every prunable channel group (the output layer
  keeps its channels), w8/a8, fine-tuned as the 4-bit one.

Each baseline is timed (build, calibration or fine-tune, evaluation). The search is then the real
``run_search`` on a config that names the network by ``model: {factory, checkpoint}``, with the
same data, ``train`` section and hardware profile, within a wall-clock budget of twice the
baselines' combined seconds: ``search.timeout_s`` is that budget less the longest baseline
fine-tune and the measured set-up time, since Optuna finishes the trial running at the timeout.
The search's hardware budget (``--search-budget int8``, the default) is the int8 model's latency
and size: candidates costlier than plain int8 are rejected before training.

Printed per model: each baseline's accuracy, latency, size and seconds beside the most accurate
front point that dominates it (accuracy >=, latency <=, size <=, one of them strictly), or
"none", and when the search's first trial dominating it finished; the search's wall time and
CPU time against twice the baselines'; whether every baseline was dominated within that budget;
and "dominated: k/3". Measured figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
import torch
from torch import nn

from autocompress.compression import QuantConv2d, QuantLinear
from autocompress.config import RunConfig, parse_config
from autocompress.data import DataConfig, load_data, make_loaders
from autocompress.evaluators import TrainEvaluator
from autocompress.evaluators.train import evaluate_accuracy, recalibrate_bn_, train_epochs
from autocompress.search import run_search
from autocompress.search.objective import TrialObjective, trial_metrics
from autocompress.search.setup import prepare_setup

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "resnet18_checkpoint"  # digits_rgb.py: "digits_rgb:load"

MODELS = ("resnet18", "mobilenet_v3_small")
# Epochs of the checkpoint's training (it stands in for the user's trained network).
CHECKPOINT_EPOCHS = {"resnet18": 4, "mobilenet_v3_small": 8}
OBJECTIVES = ["accuracy", "latency_ms", "size_kb"]
# Recipe name: (w_bits, a_bits, prune_ratio, trained)
BASELINES = {
    "int8 PTQ": (8, 8, 0.0, False),
    "4-bit QAT (w4/a4)": (4, 4, 0.0, True),
    "50% prune + int8": (8, 8, 0.5, True),
}


@dataclass(frozen=True)
class Point:
    name: str
    accuracy: float
    latency_ms: float
    size_kb: float
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time (less sensitive to other jobs on the machine)


def data_settings(args: argparse.Namespace) -> dict:
    data = {"dataset": "digits_rgb:load", "batch_size": 64}
    if args.quick:
        data.update(limit_train=128, limit_val=64)
    return data


def space_settings(args: argparse.Namespace) -> dict:
    """The search space: the project's defaults unless --w-bits/--a-bits/--prune-ratios."""
    space = {"w_bits": args.w_bits, "a_bits": args.a_bits, "prune_ratios": args.prune_ratios}
    return {key: value for key, value in space.items() if value is not None}


def run_config(
    model: str, checkpoint: Path, args: argparse.Namespace, *, search: dict | None = None
) -> RunConfig:
    """The run config shared by the baselines and the search: data, model, train, hardware."""
    config = {
        "name": f"byo-{model}",
        "seed": args.seed,
        "data": data_settings(args),
        "model": {
            "factory": f"{Path(__file__).stem}:torchvision_network",  # torchvision's, see there
            "kwargs": network_kwargs(model, args),
            "checkpoint": str(checkpoint),
            "droppable_blocks": "auto",
        },
        "space": space_settings(args),
        # The search keeps a candidate's post-training quantized self when its fine-tune ends
        # worse (off for the recipes, see run_baselines).
        "train": {"epochs": args.epochs, "lr": args.lr, "ptq_fallback": True},
        "hardware": {"profile": "analytic", "device": args.device},
        "search": {"objectives": OBJECTIVES, **(search or {})},
    }
    return parse_config(config, source=f"byo_baselines ({model})")


def torchvision_network(name: str, num_classes: int, bn_momentum: float | None = None) -> nn.Module:
    """``torchvision.models.<name>(num_classes=...)``, random init; with ``bn_momentum``, every
    BatchNorm's momentum set to it (a training setting: the weights and state_dict keys are
    the same). The run's ``model.factory``."""
    import torchvision

    network = getattr(torchvision.models, name)(num_classes=num_classes)
    if bn_momentum is not None:
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return network


def network_kwargs(model: str, args: argparse.Namespace) -> dict:
    kwargs = {"name": model, "num_classes": 10}
    if args.bn_momentum > 0:
        kwargs["bn_momentum"] = args.bn_momentum
    return kwargs


def train_checkpoint(model: str, path: Path, args: argparse.Namespace) -> float:
    """Train ``model`` from scratch on the run's data, save its state_dict to ``path``; returns
    its validation accuracy. With ``--reuse-checkpoint``, a checkpoint already at ``path`` is
    only evaluated (the BatchNorm momentum does not change the trained weights: the running
    statistics are re-estimated at the end)."""
    data = load_data(DataConfig(**data_settings(args)), seed=args.seed)
    train_loader, val_loader = make_loaders(data, batch_size=64, num_workers=0, seed=args.seed)
    torch.manual_seed(args.seed)
    network = torchvision_network(**network_kwargs(model, args))
    if args.reuse_checkpoint and path.is_file():
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return evaluate_accuracy(network, val_loader, device=torch.device("cpu"))[0]
    epochs = 1 if args.quick else CHECKPOINT_EPOCHS[model]
    device = torch.device("cpu")
    train_epochs(network, train_loader, epochs=epochs, lr=3e-3, weight_decay=1e-4, device=device)
    # With BatchNorm momentum 0.01 (torchvision's MobileNetV3) the running statistics still lag
    # the weights after a few hundred steps: re-estimate them over the training split.
    recalibrate_bn_(network, train_loader, batches=len(train_loader), device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return evaluate_accuracy(network, val_loader, device=device)[0]


@torch.no_grad()
def calibrate_(model: nn.Module, loader, *, batches: int, device: torch.device) -> None:
    """Post-training calibration: the fake-quant layers observe their input ranges (train mode)
    on ``batches`` training batches; BatchNorm stays in eval mode; nothing is trained."""
    model.to(device).eval()
    for module in model.modules():
        if isinstance(module, QuantConv2d | QuantLinear):
            module.train()
    for i, (x, _) in enumerate(loader):
        if i == batches:
            break
        model(x.to(device))
    model.eval()


def run_baselines(config: RunConfig, run_dir: Path, args: argparse.Namespace):
    start = time.perf_counter()
    # The plain fine-tune of the train section (the search adds early stopping on top of it),
    # without the search's fallback to the post-training quantized model: a recipe is one QAT.
    plain = config.train.model_copy(update={"ptq_fallback": False})
    config = config.model_copy(update={"train": plain})
    setup = prepare_setup(config, run_dir, evaluator=TrainEvaluator.from_context)
    setup_s = time.perf_counter() - start
    objective = TrialObjective(setup)
    evaluator = setup.evaluator
    points = []
    for name, (w_bits, a_bits, ratio, trained) in BASELINES.items():
        start, cpu = time.perf_counter(), time.process_time()
        arch = setup.space.family.largest_arch()  # no block dropped
        candidate = setup.space.uniform_candidate(
            arch, w_bits=w_bits, a_bits=a_bits, prune_ratio=ratio
        )
        model = objective.build(candidate)
        costs = trial_metrics(setup.profile.profile(model, input_shape=setup.data.input_shape))
        if trained:
            accuracy = evaluator.evaluate(model, candidate).accuracy
        else:
            train_loader, val_loader = make_loaders(
                setup.data,
                batch_size=evaluator.batch_size,
                num_workers=evaluator.num_workers,
                seed=config.seed,
            )
            calibrate_(model, train_loader, batches=args.calib_batches, device=evaluator.device)
            accuracy = evaluate_accuracy(model, val_loader, device=evaluator.device)[0]
        points.append(
            Point(
                name=name,
                accuracy=accuracy,
                latency_ms=costs["latency_ms"],
                size_kb=costs["size_kb"],
                seconds=time.perf_counter() - start,
                cpu_seconds=time.process_time() - cpu,
            )
        )
        print(
            f"  baseline {name:<18} accuracy {accuracy:.2%}  {points[-1].seconds:.1f} s",
            flush=True,
        )
    return points, setup_s


def dominating(rows: pd.DataFrame, point: Point) -> pd.DataFrame:
    """The rows with accuracy >= and latency, size <= the point's, one of them strictly, most
    accurate first."""
    no_worse = (
        (rows["accuracy"] >= point.accuracy)
        & (rows["latency_ms"] <= point.latency_ms)
        & (rows["size_kb"] <= point.size_kb)
    )
    strictly = (
        (rows["accuracy"] > point.accuracy)
        | (rows["latency_ms"] < point.latency_ms)
        | (rows["size_kb"] < point.size_kb)
    )
    found = rows[no_worse & strictly]
    return found.sort_values(["accuracy", "latency_ms"], ascending=[False, True])


def completion_seconds(study: optuna.Study, since: datetime) -> dict[int, float]:
    """Seconds from ``since`` to the end of each finished trial, by trial number."""
    return {
        t.number: (t.datetime_complete - since).total_seconds()
        for t in study.get_trials(deepcopy=False)
        if t.datetime_complete is not None
    }


def bench_model(model: str, out: Path, args: argparse.Namespace) -> tuple[int, int]:
    print(f"== {model}", flush=True)
    for folder in (out / f"byo-{model}", out / f"byo-{model}-baselines"):
        shutil.rmtree(folder, ignore_errors=True)  # a fresh run, never a resumed one
    checkpoint = out / f"{model}.pt"
    start = time.perf_counter()
    teacher = train_checkpoint(model, checkpoint, args)
    print(
        f"  checkpoint {checkpoint.name}: accuracy {teacher:.2%} "
        f"({time.perf_counter() - start:.0f} s, not counted)",
        flush=True,
    )

    config = run_config(model, checkpoint, args)
    points, setup_s = run_baselines(config, out / f"byo-{model}-baselines", args)
    baseline_s = sum(p.seconds for p in points)
    budget_s = 2 * baseline_s
    longest = max(p.seconds for p in points)
    timeout_s = max(budget_s - longest - setup_s, 1.0)
    int8 = points[0]
    search = {"n_trials": args.n_trials, "timeout_s": timeout_s}
    hardware = {}
    if args.search_budget == "int8":
        hardware = {"max_latency_ms": int8.latency_ms, "max_size_kb": int8.size_kb}
    config = run_config(model, checkpoint, args, search=search)
    if hardware:
        data = config.model_dump(mode="json")
        data["hardware"]["budget"] = hardware
        config = parse_config(data, source=f"byo_baselines ({model})")
    space = config.space
    print(
        f"  search: budget {budget_s:.0f} s = 2 x {baseline_s:.0f} s, search.timeout_s "
        f"{timeout_s:.0f}; space w_bits {space.w_bits} a_bits {space.a_bits} prune_ratios "
        f"{space.prune_ratios}, droppable blocks: auto; train.epochs {config.train.epochs}",
        flush=True,
    )
    began = datetime.now()  # Optuna stamps trials with naive local datetimes
    start, cpu = time.perf_counter(), time.process_time()
    result = run_search(config, runs_dir=out)
    search_s, search_cpu = time.perf_counter() - start, time.process_time() - cpu

    trials, front = result.trials, result.front
    done_at = completion_seconds(result.study, began)
    # Every trial on the front or behind it: the first one to dominate a baseline says when.
    scored = trials[(trials["state"] == "COMPLETE") & trials["feasible"]]
    trained = int(trials["trained"].sum())
    print(f"  run folder {result.run_dir}")
    print(
        f"  checkpoint (teacher) accuracy {result.teacher_metrics['accuracy']:.2%}; search: "
        f"{len(trials)} trials ({trained} trained), front of {len(front)}"
    )
    header = (
        f"  {'baseline':<18} {'acc':>7} {'lat ms':>8} {'size kB':>9} {'sec':>6} | "
        f"{'dominated by':<12} {'acc':>7} {'lat ms':>8} {'size kB':>9} {'first at':>9}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    firsts = []
    for point in points:
        left = (
            f"  {point.name:<18} {point.accuracy:>7.2%} {point.latency_ms:>8.3f} "
            f"{point.size_kb:>9.0f} {point.seconds:>6.1f} | "
        )
        beaten = dominating(front, point)
        if beaten.empty:
            print(left + "none")
            continue
        best = beaten.iloc[0]
        firsts.append(min(done_at[int(n)] for n in dominating(scored, point)["number"]))
        print(
            left + f"{'trial ' + str(int(best['number'])):<12} {best['accuracy']:>7.2%} "
            f"{best['latency_ms']:>8.3f} {best['size_kb']:>9.0f} {firsts[-1]:>7.0f} s"
        )
    dominated = len(firsts)
    print(
        "  (most accurate dominating front point; first at: when the search's first trial "
        "dominating the baseline finished, from the search's start)"
    )
    within = "within" if search_s <= budget_s else "OVER"
    print(
        f"  search wall time {search_s:.0f} s vs 2 x baselines {budget_s:.0f} s "
        f"(baselines {baseline_s:.0f} s): {within} budget"
    )
    met = dominated == len(points) and max(firsts) <= budget_s
    print(
        f"  target (every baseline dominated within {budget_s:.0f} s): "
        + ("met" if met else "not met")
        + (f", the last one at {max(firsts):.0f} s" if dominated == len(points) else "")
    )
    baseline_cpu = sum(p.cpu_seconds for p in points)
    print(
        f"  search CPU time {search_cpu:.0f} s vs 2 x baselines {2 * baseline_cpu:.0f} s "
        f"(this process; the machine's other jobs slow the wall clock)"
    )
    print(f"  {model} dominated: {dominated}/{len(points)}", flush=True)
    return dominated, len(points)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=3, help="train.epochs (QAT baselines too)")
    parser.add_argument("--lr", type=float, default=1e-3, help="train.lr (QAT baselines too)")
    parser.add_argument("--calib-batches", type=int, default=8, help="PTQ calibration batches")
    parser.add_argument("--device", default="cortex_a72", help="analytic profile device")
    parser.add_argument(
        "--search-budget",
        choices=["int8", "none"],
        default="int8",
        help="hardware budget of the search: the int8 model's latency and size, or none",
    )
    parser.add_argument(
        "--bn-momentum",
        type=float,
        default=0.0,
        help="BatchNorm momentum of the network; 0 (default): the network's own (torchvision's "
        "MobileNetV3 has 0.01)",
    )
    parser.add_argument("--w-bits", type=int, nargs="+", help="space.w_bits (default: ours)")
    parser.add_argument("--a-bits", type=int, nargs="+", help="space.a_bits (default: ours)")
    parser.add_argument("--prune-ratios", type=float, nargs="+", help="space.prune_ratios")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--n-trials", type=int, default=1000, help="the timeout ends it first")
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 epoch: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reuse-checkpoint",
        action="store_true",
        help="use OUT/<model>.pt when present instead of training it again (same --seed, --quick)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    # data.dataset names the example's digits_rgb.py and model.factory this file: both must be
    # importable where the run is read.
    for folder in (str(EXAMPLE), str(HERE)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    if args.quick:
        args.epochs = 1
    out = args.out or Path(tempfile.mkdtemp(prefix="autocompress-byo-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, out {out}", flush=True)
    total = time.perf_counter()
    summary = [(model, *bench_model(model, out, args)) for model in args.models]
    print(f"total {time.perf_counter() - total:.0f} s")
    for model, dominated, count in summary:
        print(f"dominated: {dominated}/{count} ({model})")


if __name__ == "__main__":
    main()
