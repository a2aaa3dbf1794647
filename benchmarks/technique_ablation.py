"""Technique ablation: the front's hypervolume with today's space against the space plus each
compression technique alone and all of them together, same trials and seeds, on several devices.

    python benchmarks/technique_ablation.py [--models quickstart user] [--user-model NAME]
                                            [--devices cortex_a72 jetson_orin_nano]
                                            [--variants V ...] [--trials N]
                                            [--reference box|nadir] [--quick] [--out DIR]
                                            [--seed 0] [--threads T] [--table-only]

Variants, each a list of config overrides (as the CLI's ``--set``) on top of the base config:

- ``today``: nothing (uniform quantizer, dense weights, full rank, l1 channel importance, logit
  distillation only);
- ``low-rank``: ``space.rank_ratios=[1.0,0.5,0.25]``;
- ``quantizers``: ``space.quantizers=[uniform,pot,apot,codebook]``;
- ``sparsity``: ``space.sparsity=[0,0.5,"2:4"]``;
- ``taylor``: ``space.pruning_importance=taylor`` (channels ranked by the teacher's |w*g|);
- ``feature-kd``: ``train.feature_kd={layers: [...], weight: 1.0}``, the block outputs of the
  network (``FEATURE_LAYERS``);
- ``all``: all of the above at once.

Models (``--models``):

- ``quickstart``: ``configs/quickstart.yaml`` as it is (small_cnn on digits, its space, its
  16 kB size budget), except its objectives (below) and no saved models.
- ``user``: a torchvision network (``--user-model``, default mobilenet_v3_small) named by
  ``model: {factory, checkpoint, droppable_blocks: auto}``, with the checkpoint trained first on
  the generated 3x32x32 digits exactly as ``benchmarks/byo_baselines.py`` does (its functions
  are reused: ``train_checkpoint``, ``run_config``, so the data, the ``train`` section (3 epochs,
  lr 1e-3), the BatchNorm momentum and the default space are that benchmark's; no hardware
  budget). mobilenet_v3_small is the default because its trials are the cheaper ones on one CPU
  thread: in ``--quick`` runs a trial took 9-13 s (0.6-0.9 s of it training) against resnet18's
  16-19 s (2.0 s training); its many small layers cost more in per-layer overhead than in MACs.
  It is also the compact network on which byo_baselines' search fell short, where techniques
  that keep accuracy at a lower cost have the most to win.
  ``search.warm_start`` stays at its default, which for a checkpoint queues 4 sensitivity-
  allocated candidates as the first trials, over the variant's own space (ranks, quantizers
  and sparsity included where the variant searches them).

For each model the teacher is trained (quickstart) or loaded (user) once, in
``OUT/ablation-<model>-teacher``, and copied into every run folder (its fingerprint does not
depend on the device nor on the techniques), so every variant distils from the same teacher and
no run's seconds include the teacher. Then for each (model, device, variant) a fresh
``run_search`` into ``OUT/ablation-<model>-<device>-<variant>``: the same ``seed``, the same
``search.n_trials`` (``--trials``; default 20 for quickstart, 8 for the user model), the
project's default search (NSGA-II, early stopping, surrogate), ``hardware: {profile: analytic,
device: <device>}`` and the objectives accuracy, latency_ms and size_kb (the quickstart config
also names energy_mj: left out so both models are compared on the same three).

Devices (``--devices``, default ``cortex_a72 jetson_orin_nano``): a CPU and an accelerator
with sparse kernels. jetson_orin_nano (``kind: gpu``) is the one shipped spec that declares a
``sparse: {"2:4": ...}`` kernel (Ampere sparse tensor cores, priced at a 1.5x MAC-time speedup),
so there 2:4 layers can pay in latency; on the A72 every sparse layer is priced dense. Neither
declares shift arithmetic: non-uniform weights are priced as int8 compute on both and pay in
size. What sets latency differs: the A72 runs everything on its NEON units (bits above 8 at half
the int8 rate), the Orin runs layers at <= 8 bits on 1e13 MAC/s of int8 tensor cores, where a
small network's latency is mostly the per-layer launch overhead (10 us a layer). ``edgetpu``
(``kind: accelerator``, int8 only, a 400 MB/s host link) is the other accelerator to try.

Hypervolume: per (model, device), one reference point over the trained, feasible, COMPLETE
trials of all variants together, so the variants' hypervolumes are comparable: ``--reference
box`` (default, the project's rule, ``core.reference_from_values``: accuracy 0, latency and size
at the worst value seen plus 10% of their range) or ``nadir`` (``core.nadir_reference``: the
accuracy too at its worst plus 10%, a narrower box in which accuracy differences weigh more).
The objectives are normalised identically for all variants (ideal point over all variants at 0,
reference at 1), so a hypervolume is the share of that box a variant's front dominates; the
ratios to ``today`` do not depend on the normalisation.

Printed per (model, device): variant, trials, trained trials, front size, hypervolume, ratio to
``today``, best accuracy, lowest latency and size on the front, and the search's wall seconds;
then whether ``all`` reaches at least 1.03 x today's hypervolume (the target: on at least one
device). The rows are also written to ``OUT/ablation.csv`` (rewritten after each model and device).
``--table-only``: search nothing, tabulate the finished runs already in ``--out`` (same
``--models``, ``--devices``, ``--variants`` and ``--trials``; a run without exactly that many
trials is left out), e.g. to read one device's table while another still runs.
``--quick``: a smoke run (3 trials, 1-epoch fine-tunes, a 2-epoch teacher, byo_baselines'
128/64-sample data for the user model). Measured figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch

from autocompress.config import RunConfig, apply_overrides, load_config, parse_config
from autocompress.core import (
    RunDir,
    load_trials,
    nadir_reference,
    non_dominated_mask,
    reference_from_values,
)
from autocompress.core.pareto import hypervolume, to_loss
from autocompress.search import prepare_setup, run_search

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "resnet18_checkpoint"  # digits_rgb.py: byo_baselines' dataset
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

MODELS = ("quickstart", "user")
USER_MODELS = ("resnet18", "mobilenet_v3_small")
DEVICES = ("cortex_a72", "jetson_orin_nano")
OBJECTIVES = ["accuracy", "latency_ms", "size_kb"]
TRIALS = {"quickstart": 20, "user": 8}
TARGET = 1.03  # all techniques: at least 3% more hypervolume than today's space

# Feature distillation: the output of each block (small_cnn: the ReLU closing each conv block,
# as docs/guide/techniques.md measured it) or of each resolution stage (torchvision networks: a
# dropped block's layer is skipped by the candidates that lack it).
FEATURE_LAYERS = {
    "small_cnn": ["features.*.2"],
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "mobilenet_v3_small": ["features.1", "features.3", "features.8", "features.11"],
}
TECHNIQUES = {  # variant: overrides; feature-kd's depends on the network (feature_kd_override)
    "low-rank": ["space.rank_ratios=[1.0,0.5,0.25]"],
    "quantizers": ["space.quantizers=[uniform,pot,apot,codebook]"],
    "sparsity": ['space.sparsity=[0,0.5,"2:4"]'],
    "taylor": ["space.pruning_importance=taylor"],
    "feature-kd": None,
}
VARIANTS = ("today", *TECHNIQUES, "all")


def feature_kd_override(network: str) -> str:
    kd = {"layers": FEATURE_LAYERS[network], "weight": 1.0}
    return f"train.feature_kd={json.dumps(kd)}"  # JSON is YAML, as apply_overrides reads it


def variant_overrides(variant: str, network: str) -> list[str]:
    """The config overrides of ``variant`` for a model whose network is ``network``."""
    if variant == "today":
        return []
    if variant == "all":
        return [o for name in TECHNIQUES for o in variant_overrides(name, network)]
    if variant == "feature-kd":
        return [feature_kd_override(network)]
    return list(TECHNIQUES[variant])


# ---------------------------------------------------------------- configs
def byo_module():
    """benchmarks/byo_baselines.py, imported: its checkpoint training and run config. Its folder
    (the run's ``model.factory`` module) and the example's (``data.dataset``) must be importable
    wherever the run is read, as in that benchmark."""
    for folder in (str(EXAMPLE), str(HERE)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import byo_baselines

    return byo_baselines


def byo_args(args: argparse.Namespace, device: str) -> argparse.Namespace:
    """The namespace byo_baselines' functions read: its command line's defaults (the project's
    default space, the network's own BatchNorm momentum, 3 epochs at lr 1e-3), this run's seed,
    --quick and device."""
    argv = ["--seed", str(args.seed), "--device", device] + (["--quick"] * args.quick)
    byo = byo_module().build_parser().parse_args(argv)
    if args.quick:
        byo.epochs = 1  # as byo_baselines' main does
    return byo


def base_data(model: str, args: argparse.Namespace, checkpoint: Path | None) -> dict[str, Any]:
    """The model's config as a mapping, before the device, the variant and the run name."""
    if model == "quickstart":
        data = load_config(args.config).model_dump(mode="json")
        if args.quick:
            apply_overrides(data, ["train.epochs=1", "teacher.epochs=2"])
    else:
        byo = byo_module()
        config = byo.run_config(args.user_model, checkpoint, byo_args(args, DEVICES[0]))
        data = config.model_dump(mode="json")
    data["seed"] = args.seed
    data["hardware"]["profile"] = "analytic"
    data["search"]["objectives"] = list(args.objectives)
    data["search"]["n_trials"] = args.trials or (3 if args.quick else TRIALS[model])
    data["search"]["save_models"] = False  # only the tables are read
    return data


def run_config(
    base: dict[str, Any],
    *,
    name: str,
    device: str,
    overrides: list[str],
    source: str,
    folder: Path | None = None,
) -> RunConfig:
    """``base`` named ``name``, priced on ``device``, with the variant's ``overrides``;
    ``folder``: where the config's plugin files are (the quickstart config's folder)."""
    data = json.loads(json.dumps(base))  # a deep copy: apply_overrides changes it in place
    data["name"] = name
    data["hardware"]["device"] = device
    apply_overrides(data, overrides)
    return parse_config(data, source=source, base=folder)


def network_of(model: str, args: argparse.Namespace) -> str:
    return "small_cnn" if model == "quickstart" else args.user_model


# ---------------------------------------------------------------- the runs
def objective_names(config: RunConfig) -> list[str]:
    return [o.name for o in config.objectives()]


def eligible(trials: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    """The trials that can be on a front: COMPLETE, within budget, trained, every objective
    finite (an over-budget trial's placeholder accuracy never counts)."""
    values = trials[objectives].apply(pd.to_numeric).to_numpy(dtype=float)
    keep = (
        trials["state"].eq("COMPLETE").to_numpy()
        & trials["feasible"].eq(True).to_numpy()
        & trials["trained"].eq(True).to_numpy()
        & np.isfinite(values).all(axis=1)
    )
    return trials[keep]


def train_teacher(config: RunConfig, out: Path) -> tuple[Path, float, float]:
    """Train (or, for a checkpoint, load) the model's teacher once, into its own run folder;
    returns that teacher folder, its accuracy and the seconds it took."""
    run = RunDir(out / config.name)
    shutil.rmtree(run.path, ignore_errors=True)
    start = time.perf_counter()
    accuracy = prepare_setup(config, run).teacher_metrics.get("accuracy", math.nan)
    return run.teacher_dir, accuracy, time.perf_counter() - start


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ran: a warm-start candidate queued beyond n_trials is left WAITING."""
    return trials[trials["state"].isin(["COMPLETE", "PRUNED", "FAIL"])]


def summary(
    trials: pd.DataFrame, config: RunConfig, *, seconds: float, cpu_seconds: float
) -> dict[str, Any]:
    """A run's counts, the trials that can be on its front (``points``) and its seconds."""
    done = finished(trials)
    return {
        "trials": len(done),
        "trained": int(done["trained"].eq(True).sum()),
        "points": eligible(trials, objective_names(config)),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def finished_variant(config: RunConfig, out: Path) -> dict[str, Any] | None:
    """The finished search of ``config`` in ``out / config.name`` read back (``--table-only``)
    as :func:`run_variant` summarises it, its seconds NaN (the run folder does not keep the
    wall time); None when the folder is missing or its search has not run exactly
    ``search.n_trials`` trials (unfinished, or a run of another budget)."""
    path = out / config.name
    if not path.is_dir():
        return None
    trials = load_trials(path)
    if len(finished(trials)) != config.search.n_trials:
        return None
    return summary(trials, config, seconds=math.nan, cpu_seconds=math.nan)


def run_variant(config: RunConfig, out: Path, teacher: Path) -> dict[str, Any]:
    """One fresh search of ``config`` into ``out / config.name``, distilling from ``teacher``;
    its :func:`summary`."""
    run = RunDir(out / config.name)
    shutil.rmtree(run.path, ignore_errors=True)  # a fresh run, never a resumed one
    # The teacher's fingerprint (seed, data, architecture, teacher section, checkpoint) is the
    # same for every variant and device: copied, it is loaded instead of trained again.
    shutil.copytree(teacher, run.teacher_dir)
    start, cpu = time.perf_counter(), time.process_time()
    result = run_search(config, runs_dir=out)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return summary(result.trials, config, seconds=seconds, cpu_seconds=cpu_seconds)


# ---------------------------------------------------------------- hypervolume
def shared_box(
    values: np.ndarray, config: RunConfig, rule: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference point over ``values`` (every variant's points of one model and device) by
    ``rule``, and the ideal point and scale that map the box onto the unit cube (in loss
    terms, every objective minimised); the same for every variant."""
    objectives = config.objectives()
    directions = [o.direction for o in objectives]
    if rule == "box":
        reference = reference_from_values(values, objectives)
    else:
        reference = nadir_reference(values, directions)
    loss = to_loss(values, directions, func="shared_box")
    ref_loss = to_loss(reference[None], directions, func="shared_box")[0]
    ideal = loss.min(axis=0)
    scale = np.where(ref_loss > ideal, ref_loss - ideal, 1.0)
    return reference, ideal, scale


def normalised_hypervolume(
    values: np.ndarray, directions: list[str], ideal: np.ndarray, scale: np.ndarray
) -> float:
    """The share of the unit box (ideal point to reference) that ``values`` dominate."""
    if len(values) == 0:
        return 0.0
    loss = (to_loss(values, directions, func="normalised_hypervolume") - ideal) / scale
    return hypervolume(loss, ["minimize"] * loss.shape[1], np.ones(loss.shape[1]))


def table_rows(
    model: str, device: str, runs: dict[str, dict], config: RunConfig, rule: str
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One row per variant: counts, front, hypervolume against the shared reference and its
    ratio to ``today``'s (NaN when today has none)."""
    names = objective_names(config)
    directions = [o.direction for o in config.objectives()]
    values = {v: run["points"][names].to_numpy(dtype=float) for v, run in runs.items()}
    everything = np.vstack(list(values.values()))
    if len(everything):
        reference, ideal, scale = shared_box(everything, config, rule)
    else:  # no variant trained a candidate within budget: nothing to compare
        reference = ideal = scale = np.full(len(names), math.nan)
    rows = []
    for variant, run in runs.items():
        front = run["points"][non_dominated_mask(values[variant], directions)]
        hv = (
            normalised_hypervolume(values[variant], directions, ideal, scale)
            if len(everything)
            else math.nan
        )
        rows.append(
            {
                "model": model,
                "device": device,
                "variant": variant,
                "trials": run["trials"],
                "trained": run["trained"],
                "front": len(front),
                "hypervolume": hv,
                "best_accuracy": front["accuracy"].max() if len(front) else math.nan,
                "min_latency_ms": front["latency_ms"].min() if len(front) else math.nan,
                "min_size_kb": front["size_kb"].min() if len(front) else math.nan,
                "seconds": run["seconds"],
                "cpu_seconds": run["cpu_seconds"],
            }
        )
    today = next((r["hypervolume"] for r in rows if r["variant"] == "today"), math.nan)
    for row in rows:
        ok = today > 0 and math.isfinite(row["hypervolume"])
        row["hv_ratio"] = row["hypervolume"] / today if ok else math.nan
    return rows, reference


def print_table(rows: list[dict[str, Any]], reference: np.ndarray, names: list[str]) -> None:
    point = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, reference, strict=True))
    print(f"  reference point (shared by the variants): {point}")
    header = (
        f"  {'variant':<11} {'trials':>6} {'trained':>7} {'front':>5} {'HV':>7} {'vs today':>9} "
        f"{'best acc':>8} {'min lat ms':>10} {'min size kB':>11} {'sec':>6}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in rows:
        ratio = "n/a" if math.isnan(r["hv_ratio"]) else f"{r['hv_ratio'] - 1:+.1%}"
        print(
            f"  {r['variant']:<11} {r['trials']:>6} {r['trained']:>7} {r['front']:>5} "
            f"{r['hypervolume']:>7.4f} {ratio:>9} {r['best_accuracy']:>8.2%} "
            f"{r['min_latency_ms']:>10.4g} {r['min_size_kb']:>11.4g} {r['seconds']:>6.0f}",
            flush=True,
        )


# ---------------------------------------------------------------- main
def bench_model(model: str, out: Path, args: argparse.Namespace, table: list[dict]) -> None:
    network = network_of(model, args)
    print(f"== {model} ({network})", flush=True)
    checkpoint = out / f"{network}.pt" if model == "user" else None
    if checkpoint is not None and not args.table_only:
        start = time.perf_counter()
        accuracy = byo_module().train_checkpoint(network, checkpoint, byo_args(args, DEVICES[0]))
        print(
            f"  checkpoint {checkpoint.name}: accuracy {accuracy:.2%} "
            f"({time.perf_counter() - start:.0f} s, not counted)",
            flush=True,
        )
    base = base_data(model, args, checkpoint)
    source = f"technique_ablation ({model})"
    folder = args.config.parent if model == "quickstart" else None
    teacher_config = run_config(
        base,
        name=f"ablation-{model}-teacher",
        device=args.devices[0],
        overrides=[],
        source=source,
        folder=folder,
    )
    if not args.table_only:
        teacher, accuracy, seconds = train_teacher(teacher_config, out)
        print(f"  teacher accuracy {accuracy:.2%} ({seconds:.0f} s, not counted)", flush=True)
    print(
        f"  search.n_trials {base['search']['n_trials']}, seed {args.seed}, objectives "
        f"{base['search']['objectives']}, train.epochs {base['train']['epochs']}, warm start "
        f"{teacher_config.warm_start_method()} (every variant)",
        flush=True,
    )
    for device in args.devices:
        print(f"-- {model} on {device}", flush=True)
        runs = {}
        for variant in args.variants:
            overrides = variant_overrides(variant, network)
            config = run_config(
                base,
                name=f"ablation-{model}-{device}-{variant}",
                device=device,
                overrides=overrides,
                source=f"{source}, {variant}",
                folder=folder,
            )
            if args.table_only:
                run = finished_variant(config, out)
                if run is None:
                    print(
                        f"  {variant:<11} no finished {config.search.n_trials}-trial run in "
                        f"{out / config.name}: left out",
                        flush=True,
                    )
                    continue
                runs[variant] = run
            else:
                runs[variant] = run = run_variant(config, out, teacher)
            print(
                f"  {variant:<11} {run['trials']} trials ({run['trained']} trained) in "
                f"{run['seconds']:.0f} s; {' '.join(overrides) or 'no overrides'}",
                flush=True,
            )
        if not runs:  # --table-only, nothing finished on this device
            continue
        rows, reference = table_rows(model, device, runs, config, args.reference)
        print_table(rows, reference, objective_names(config))
        table.extend(rows)
        pd.DataFrame(table).to_csv(out / "ablation.csv", index=False)


def print_target(table: list[dict[str, Any]]) -> None:
    """Per model and device, ``all`` against ``today``; the target is met for a model when it
    holds on at least one device."""
    frame = pd.DataFrame(table)
    if frame.empty or not {"today", "all"} <= set(frame["variant"]):
        print("target: needs the variants today and all")
        return
    print(f"target: all >= {TARGET:.2f} x today's hypervolume on at least one device")
    for model, rows in frame.groupby("model", sort=False):
        met = []
        for device, group in rows.groupby("device", sort=False):
            ratio = group.set_index("variant").loc["all", "hv_ratio"]
            ok = bool(ratio >= TARGET)
            met += [device] if ok else []
            shown = "n/a" if math.isnan(ratio) else f"{ratio:.3f}"
            print(f"  {model} on {device}: all / today = {shown}: {'met' if ok else 'not met'}")
        print(f"  {model}: " + (f"met ({', '.join(met)})" if met else "not met"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--user-model", choices=USER_MODELS, default="mobilenet_v3_small")
    parser.add_argument("--devices", nargs="+", default=list(DEVICES), help="analytic devices")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--trials", type=int, default=None, help="search.n_trials (default: 20 / 8; --quick 3)"
    )
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    parser.add_argument(
        "--reference",
        choices=["box", "nadir"],
        default="box",
        help="box: accuracy 0, latency/size worst + 10%%; nadir: every objective worst + 10%%",
    )
    parser.add_argument("--config", type=Path, default=QUICKSTART, help="the quickstart config")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="search nothing: the tables of the finished runs already in --out",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if "today" not in args.variants:
        args.variants.insert(0, "today")  # the ratios are to today's space
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.table_only and args.out is None:
        parser.error("--table-only reads the runs of --out: give --out")
    out = args.out or Path(tempfile.mkdtemp(prefix="autocompress-ablation-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, out {out}", flush=True)
    total = time.perf_counter()
    table: list[dict[str, Any]] = []
    for model in args.models:
        bench_model(model, out, args, table)
    print(f"total {time.perf_counter() - total:.0f} s; table: {out / 'ablation.csv'}")
    print_target(table)


if __name__ == "__main__":
    main()
