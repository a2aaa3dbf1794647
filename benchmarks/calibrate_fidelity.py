"""How well does a spec calibrated on a per-layer table predict layers it has not seen?

    python benchmarks/calibrate_fidelity.py [--quick] [--seeds 0 1 2] [--device cortex_a72]
                                            [--holdout 0.5] [--noise 0.03] [--out DIR]

The per-layer table comes from a KNOWN ground-truth latency model of a made-up int8 CPU (written
out in :func:`true_latency_ms`, independently of the analytic profile), with effects the shipped
``cortex_a72`` spec lacks:

* depthwise convs reach 12% of the dense MAC rate;
* 4-bit operands run twice as fast as 8-bit ones, and 2-bit no faster than 4-bit (the speedup
  saturates at 4 bits); 16-bit runs at 40% of the 8-bit rate;
* output channels are computed in blocks of 16 and the input channels of a group in blocks of
  4 (a partly filled block costs a full one); the analytic model has a term for the first
  only;
* 25 us per layer, 3.5 GB/s to memory, and multiplicative noise, uniform in +-3%.

Layer geometries are those of torchvision's resnet18, mobilenet_v2 and mobilenet_v3_small
(every Conv2d and Linear call) at 32x32 and 224x224 inputs, each at 2, 4, 8 and 16 bits
(weights and activations alike). For each seed: the table is written as CSV, imported
(``import_lut_csv``, what ``autocompress profile import-lut`` runs) and the DEVICE spec is
calibrated on a random half (``calibrate_to_lut``, what ``profile calibrate`` runs). On the
other half: Kendall tau and % of layers within +-10%, for the shipped spec and the calibrated
one. Printed per seed, then the median and the range over the seeds.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocompress.hardware_profiles import calibrate_to_lut, import_lut_csv, load_device
from autocompress.hardware_profiles.lut_import import CSV_COLUMNS

NETWORKS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small")
SIZES = (32, 224)
BITS = (2, 4, 8, 16)

# The ground truth (see the module doc).
RATE_8BIT = 1.6e10  # dense MAC/s at 8 bits
SATURATION_BITS = 4
RATE_16BIT = 0.4  # of the 8-bit rate
DEPTHWISE = 0.12
OUT_TILE, IN_TILE = 16, 4
OVERHEAD_S = 25e-6
BANDWIDTH = 3.5e9
CACHE_BYTES = 1 << 20  # weights that fit stay cached between runs of the layer


def layer_geometries(networks=NETWORKS, sizes=SIZES) -> list[tuple[int, ...]]:
    """Distinct ``(in, out, kernel, stride, padding, groups, height, width)`` of every Conv2d
    and Linear call of ``networks`` at ``sizes`` x ``sizes`` RGB inputs (a Linear as a 1x1
    conv on a 1x1 input)."""
    import torchvision

    found: dict[tuple[int, ...], None] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        if isinstance(module, nn.Conv2d):
            if module.kernel_size[0] != module.kernel_size[1] or module.dilation != (1, 1):
                return  # not expressible in the table's columns
            found[
                (
                    module.in_channels,
                    module.out_channels,
                    module.kernel_size[0],
                    module.stride[0],
                    module.padding[0],
                    module.groups,
                    x.shape[2],
                    x.shape[3],
                )
            ] = None
        else:
            found[(module.in_features, module.out_features, 1, 1, 0, 1, 1, 1)] = None

    for name in networks:
        model = getattr(torchvision.models, name)(weights=None).eval()
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.register_forward_hook(hook)
        for size in sizes:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
    return list(found)


def true_latency_ms(geometry: tuple[int, ...], bits: int) -> float:
    """The ground-truth device's latency of one layer with ``bits``-bit weights and inputs."""
    c_in, c_out, k, stride, pad, groups, h, w = geometry
    h_out, w_out = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    per_group = c_in // groups
    macs = c_out * h_out * w_out * per_group * k * k
    # Blocks of channels: a partly filled block costs a full one.
    padded_out = math.ceil(c_out / OUT_TILE) * OUT_TILE
    padded_in = per_group if per_group == 1 else math.ceil(per_group / IN_TILE) * IN_TILE
    work = macs * (padded_out / c_out) * (padded_in / per_group)
    if bits <= 8:
        rate = RATE_8BIT * 8 / max(bits, SATURATION_BITS)
    else:
        rate = RATE_8BIT * RATE_16BIT * 16 / bits
    if groups > 1 and groups == c_in:
        rate *= DEPTHWISE
    compute_s = work / rate
    weights = c_out * per_group * k * k * bits / 8
    moved = (c_in * h * w + c_out * h_out * w_out) * bits / 8
    memory_s = (moved + (0 if weights <= CACHE_BYTES else weights)) / BANDWIDTH
    return (max(compute_s, memory_s) + OVERHEAD_S) * 1e3


def write_table(path: Path, geometries, *, noise: float, seed: int) -> int:
    """The ground truth's table as CSV, times seeded uniform noise of +-``noise``."""
    rng = np.random.default_rng(seed)
    lines = [",".join(CSV_COLUMNS)]
    for geometry in geometries:
        for bits in BITS:
            ms = true_latency_ms(geometry, bits) * (1 + rng.uniform(-noise, noise))
            lines.append(",".join(map(str, (*geometry, bits, bits, f"{ms:.6g}"))))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="resnet18 and mobilenet_v3_small at 32x32, 1 seed"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--device", default="cortex_a72", help="built-in spec to calibrate")
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--out", type=Path, default=None, help="keep the tables and specs here")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    networks, sizes = (
        (("resnet18", "mobilenet_v3_small"), (32,)) if args.quick else (NETWORKS, SIZES)
    )
    geometries = layer_geometries(networks, sizes)
    print(
        f"{len(geometries)} distinct layer geometries of {', '.join(networks)} at "
        f"{', '.join(f'{s}x{s}' for s in sizes)}; bits {list(BITS)}"
    )
    base = load_device(args.device)
    folder = args.out or Path(tempfile.mkdtemp(prefix="calibrate_fidelity_"))
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[float]] = {
        k: [] for k in ("tau_base", "tau_cal", "within_base", "within_cal")
    }
    print(
        f"{'seed':>4}  {'rows':>5}  {'held out':>8}  {'tau ' + args.device:>16}  "
        f"{'tau calibrated':>14}  {'±10% ' + args.device:>16}  {'±10% calibrated':>15}  fit s"
    )
    for seed in seeds:
        table = folder / f"table_seed{seed}.csv"
        rows = write_table(table, geometries, noise=args.noise, seed=seed)
        lut_path = import_lut_csv(table).save(folder / f"lut_seed{seed}.json")
        start = time.perf_counter()
        result = calibrate_to_lut(base, lut_path, holdout=args.holdout, seed=seed)
        seconds = time.perf_counter() - start
        before, after = result.heldout_before, result.heldout_after
        figures["tau_base"].append(before.kendall_tau)
        figures["tau_cal"].append(after.kendall_tau)
        figures["within_base"].append(100 * before.within_10pct)
        figures["within_cal"].append(100 * after.within_10pct)
        print(
            f"{seed:>4}  {rows:>5}  {after.n:>8}  {before.kendall_tau:>16.3f}  "
            f"{after.kendall_tau:>14.3f}  {100 * before.within_10pct:>15.1f}%  "
            f"{100 * after.within_10pct:>14.1f}%  {seconds:5.1f}"
        )
        spec = result.spec
        scaling = spec.bit_scaling
        print(
            f"      fitted: efficiency {_rounded(spec.compute_efficiency_by_bits)}, "
            f"factors {_rounded(spec.layer_efficiency)}, bit scaling "
            + (f"{scaling.exponent:.2f} to {scaling.saturation_bits} bits" if scaling else "none")
            + f", tile {spec.channel_tile}, overhead {spec.layer_overhead_s * 1e6:.1f} us, "
            f"bandwidth {spec.memory_bandwidth_bytes_per_s / 1e9:.2f} GB/s"
        )
    print(f"median [min, max] over seeds {seeds}, held-out layers:")
    for label, key, unit in (
        (f"Kendall tau, {args.device}", "tau_base", ""),
        ("Kendall tau, calibrated", "tau_cal", ""),
        (f"within ±10%, {args.device}", "within_base", "%"),
        ("within ±10%, calibrated", "within_cal", "%"),
    ):
        values = figures[key]
        digits = 1 if unit else 3
        median, low, high = (f"{v:.{digits}f}{unit}" for v in (np.median(values), *_span(values)))
        print(f"  {label:<28} {median} [{low}, {high}]")
    print(f"tables and LUTs in {folder}")
    return figures


def _span(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


def _rounded(mapping) -> dict:
    return {k: round(v, 3) for k, v in mapping.items()}


if __name__ == "__main__":
    main()
