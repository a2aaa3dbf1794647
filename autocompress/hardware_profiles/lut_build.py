"""Measuring latency LUTs on this host, and choosing from a search space what to measure.

How an entry is measured: each distinct group is timed on its own (a tiny model of just that
group, random weights, batch 1) with :class:`MeasuredProfile`, the same way whole models are
timed. Timed completely alone, a layer is charged for things a model pays once or not at all:
the per-run cost (input binding, output allocation, the Python call) and layout conversions at
its boundaries (ONNX Runtime runs convs in a blocked NCHWc layout and converts in and out at the
edges of the graph; in a model, neighbouring convs hand the blocked layout on, and such
conversions cost up to half of a MobileNetV2 measured layer by layer). So every group is timed
twice, alone (``A = R + in(x) + L + out(y)``) and between two cheap *context ops* that keep the
runtime's layout (``B = R + in(x) + C(x) + L + C(y) + out(y)``; a depthwise 1x1 conv for a
conv, a square Linear for a linear), and each context op is timed alone per shape
(``C_x = R + in(x) + C(x) + out(x)``); then ``L = (A + B - C_x - C_y) / 2`` up to the
difference between converting a tensor in and out, which cancels when they cost the same.
The per-run cost ``R`` cancels too; it is measured on a near-empty model and stored once as
``overhead_ms``.

:func:`build_lut` does this (with :func:`~autocompress.hardware_profiles.host.host_facts`
recording where); :func:`measure_models` times whole models the same way (the references a LUT
is compared with); :func:`layer_shapes_of_space` samples a search space (its
:func:`joint_space`) and lists the distinct layer keys of the candidates drawn (what a LUT for
that space should hold).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from autocompress.core.validation import check_int
from autocompress.hardware_profiles.deployed import INT8, INT8_MAX_BITS
from autocompress.hardware_profiles.graph import check_input_shape
from autocompress.hardware_profiles.host import host_facts
from autocompress.hardware_profiles.lut_table import (
    ACTIVATION_FACTORIES,
    DEPLOYED,
    HOST_PRECISION,
    LUT_BACKENDS,
    LatencyLUT,
    LayerKey,
    LUTEntry,
)
from autocompress.hardware_profiles.lut_trace import model_layers

if TYPE_CHECKING:
    from autocompress.hardware_profiles.remote import RemoteProfile
    from autocompress.spaces import JointSearchSpace, SpaceConfig

logger = logging.getLogger(__name__)

__all__ = [
    "RETRY_PAUSES_S",
    "TimingJournal",
    "build_lut",
    "context_module",
    "joint_space",
    "layer_module",
    "layer_shapes_of_space",
    "measure_models",
]

# Measuring the per-run overhead several times through a build spreads it over load changes.
_OVERHEAD_SAMPLES = 3
# A remote timing that fails (connection dropped, agent restarting) is retried after these
# pauses before the build stops; its journal keeps what was measured for the next run.
RETRY_PAUSES_S = (1.0, 4.0, 15.0)


class TimingJournal:
    """Timings measured so far, one JSON line each (``{"id": ..., "ms": ...}``), appended and
    flushed as they come: a build that stops (a dropped connection, Ctrl-C, a crash) and is run
    again with the same journal measures only what is missing. A torn last line is ignored."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        self.done: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.done[str(entry["id"])] = float(entry["ms"])
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, timing_id: str, ms: float) -> None:
        self.done[timing_id] = ms
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"id": timing_id, "ms": ms}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _timer(
    profiler: Any,
    journal: TimingJournal,
    *,
    remote: bool,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> Callable[[str, nn.Module, tuple[int, ...]], float]:
    """``time_ms(timing_id, module, shape)``: the journal's figure when it has one, else a
    measurement (retried per :data:`RETRY_PAUSES_S` when remote) that is then journaled."""
    done = 0

    def measure(module: nn.Module, shape: tuple[int, ...]) -> float:
        pauses = list(RETRY_PAUSES_S)
        while True:
            try:
                return profiler.profile(module, input_shape=shape).latency_ms
            except RuntimeError as err:
                if not remote:
                    raise
                if not pauses:
                    where = f"kept in {journal.path}" if journal.path else "not kept (no journal)"
                    raise RuntimeError(
                        f"{err} Stopped after {done} of {total} timings; "
                        f"{len(journal.done)} timings {where}. Run the same command again to "
                        "measure only the rest."
                    ) from None
                pause = pauses.pop(0)
                logger.warning("%s Retrying in %.0f s.", err, pause)
                time.sleep(pause)

    def time_ms(timing_id: str, module: nn.Module, shape: tuple[int, ...]) -> float:
        nonlocal done
        if timing_id not in journal.done:
            journal.add(timing_id, measure(module, shape))
        done += 1
        if progress is not None:
            progress(done, total)
        return journal.done[timing_id]

    return time_ms


def _profiler(
    remote: RemoteProfile | None,
    backend: str,
    warmup: int,
    repeats: int,
    threads: int,
    quantized: bool | None,
) -> tuple[Any, dict[str, Any]]:
    """The profile that times (``remote`` or this host's MeasuredProfile; ``quantized``
    defaults to True for every backend but torch) and the facts of where it times."""
    from autocompress.hardware_profiles.measured import MeasuredProfile

    quantized = backend != "torch" if quantized is None else quantized
    if remote is None:
        profiler = MeasuredProfile(
            backend=backend, warmup=warmup, repeats=repeats, threads=threads, quantized=quantized
        )
        return profiler, host_facts(backend=backend, threads=threads)
    if backend != remote.runtime or remote.quantized != quantized:
        raise ValueError(
            "A remote device times models as its RemoteProfile says: pass "
            f"backend={remote.runtime!r} and quantized={remote.quantized}. Got "
            f"backend={backend!r}, quantized={quantized}."
        )
    return remote, {"remote": remote.url, **remote.info(), "backend": backend, "threads": threads}


def layer_module(key: LayerKey, *, seed: int = 0) -> nn.Module:
    """The isolated op group of ``key`` as an eval-mode module with seeded random weights.

    Its input is ``(1, *key.input_shape)``. Weight values do not change kernel timings; the seed
    only keeps the module reproducible. An int8 key's Conv/Linear carries 8-bit ``w_bits`` and
    ``a_bits``, which is what makes a quantized :class:`MeasuredProfile` run it as int8.
    """
    if not isinstance(key, LayerKey):
        raise ValueError(
            f"The 'key' parameter of layer_module must be a LayerKey. Got {key!r} instead."
        )
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    dims = len(key.input_size)
    if key.kind == "linear":
        layers.append(nn.Linear(key.in_channels, key.out_channels, bias=True))
        norm = nn.BatchNorm1d
    else:
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        layers.append(
            conv_cls(
                key.in_channels,
                key.out_channels,
                key.kernel,
                stride=key.stride,
                padding=key.padding,
                dilation=key.dilation,
                groups=key.groups,
                bias=not key.bn,
            )
        )
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    if key.bn:
        layers.append(norm(key.out_channels))
    if key.act != "none":
        layers.append(ACTIVATION_FACTORIES[key.act]())
    _set_precision(layers[0], key.precision)
    module = nn.Sequential(*layers)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        # A ReLU after a negative shift can zero every output; an int8 runtime calibrated on
        # that sees a zero range it cannot requantize (XNNPACK refuses the graph). With a
        # shift >= 0 about half the outputs stay positive; values never change the timing.
        layers[1 if key.bn else 0].bias.abs_()
    return module.eval()


def _set_precision(layer: nn.Module, precision: str) -> None:
    # The attributes graph.layer_bits reads: the deployed export quantizes int8 layers only.
    if precision == INT8:
        layer.w_bits = layer.a_bits = INT8_MAX_BITS


def context_module(
    kind: Literal["conv", "linear"],
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    precision: str = HOST_PRECISION,
) -> nn.Module:
    """The cheap op placed before/after a layer when it is timed in context (see module doc).

    ``shape``: the tensor it runs on, without the batch dim. A conv gets a depthwise 1x1 conv
    (keeps the runtime's conv layout, costs about one pass over the tensor); a linear gets a
    square ``nn.Linear`` over the last dim. ``precision``: the layer's it surrounds, so that an
    int8 layer hands its neighbours int8 tensors as in a quantized model.
    """
    generator = torch.Generator().manual_seed(seed)
    if kind == "linear":
        module: nn.Module = nn.Linear(shape[-1], shape[-1])
    else:
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(shape) - 1]
        module = conv_cls(shape[0], shape[0], 1, groups=shape[0])
    _set_precision(module, precision)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module.eval()


def build_lut(
    items: Iterable[LayerKey | tuple[nn.Module, tuple[int, ...]]],
    *,
    backend: Literal["onnxruntime", "torch", "executorch", "litert"] = "onnxruntime",
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    rounds: int = 3,
    seed: int = 0,
    quantized: bool | None = None,
    remote: RemoteProfile | None = None,
    journal: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LatencyLUT:
    """Measure every distinct layer op group of ``items`` on this host (see the module doc).

    ``items``: :class:`LayerKey` objects (e.g. from :func:`layer_shapes_of_space`) and/or
    ``(model, input_shape)`` pairs whose layers are traced with :func:`model_layers`. Layers
    without a key are skipped. ``quantized`` (default: True, False for torch): layers are timed
    as deployed, int8 keys with the runtime's int8 kernels (onnxruntime's QDQ graph, an
    ExecuTorch XNNPACK ``.pte``, a LiteRT ``.tflite``; see :class:`MeasuredProfile`), and the
    LUT's precision is :data:`DEPLOYED`; otherwise every key must be :data:`HOST_PRECISION` and
    everything runs float (torch and onnxruntime only: the converted runtimes time the program
    as deployed). Every timing is a
    :class:`MeasuredProfile` figure (``backend``, ``threads``,
    ``warmup``, ``repeats``). Everything is timed once per round, rounds one after another, and
    each timing keeps its best (smallest) median over the rounds: on a shared machine, other
    processes and virtual-machine neighbours only ever add time, and they come and go within
    seconds (a 30% slower phase is common on small cloud VMs), so the best of a few rounds is
    the repeatable figure (the reasoning of Python's ``timeit``). Whole-model references that a
    LUT is compared with should be taken the same way. ``progress(done, total)`` is called after
    each timing. Timing is serialised process-wide by MeasuredProfile. About ``2 * rounds``
    timings per key.

    ``remote``: a :class:`RemoteProfile` to time on the device that runs its agent instead of
    on this host (its own warmup/repeats/threads apply; the LUT's host facts are the agent's
    ``/info``). A failed remote timing is retried after each of :data:`RETRY_PAUSES_S`.
    ``journal``: a file that keeps every timing as it is made (:class:`TimingJournal`): run the
    build again with the same journal after it stopped, and only the missing timings are made.
    """
    if backend not in LUT_BACKENDS:
        raise ValueError(
            f"The 'backend' parameter of build_lut must be one of {list(LUT_BACKENDS)}. "
            f"Got {backend!r} instead."
        )
    check_int(threads, name="threads", where="build_lut", minimum=1)
    check_int(warmup, name="warmup", where="build_lut", minimum=0)
    check_int(repeats, name="repeats", where="build_lut", minimum=1)
    check_int(rounds, name="rounds", where="build_lut", minimum=1)
    profiler, host = _profiler(remote, backend, warmup, repeats, threads, quantized)
    quantized = bool(profiler.quantized)
    keys = _distinct_keys(items, precision=DEPLOYED if quantized else HOST_PRECISION)
    contexts = list(dict.fromkeys(c for key in keys for c in _contexts(key)))
    total = rounds * (2 * len(keys) + len(contexts)) + _OVERHEAD_SAMPLES
    timer = _timer(
        profiler, TimingJournal(journal), remote=remote is not None, total=total, progress=progress
    )

    def time_ms(timing_id: str, module: nn.Module, shape: tuple[int, ...]) -> float:
        return timer(f"lut {timing_id}", module, shape)

    # Every module is built once and timed in every round, so that a profile reusing its
    # conversions (ONNX, .pte, .tflite: seconds each, the timing milliseconds) converts it once.
    # The price: every layer and its conversion stay in memory for the whole build (tens to
    # hundreds of MB for a ResNet-sized space).
    overhead_module = nn.ReLU()
    context_modules = {c: context_module(*c[:2], precision=c[2]) for c in contexts}
    layers = {key: layer_module(key, seed=seed + index) for index, key in enumerate(keys)}
    # Fresh context ops in each sandwich: one module twice in a graph would share its weights
    # (which ExecuTorch's XNNPACK delegate then cannot load).
    sandwiches = {
        key: nn.Sequential(
            context_module(*before[:2], precision=before[2]),
            layers[key],
            context_module(*after[:2], precision=after[2]),
        )
        for key in keys
        for before, after in [_contexts(key)]
    }
    # A near-empty model: what one session run costs by itself. Sampled at the start, the middle
    # and the end of the build, and like every timing, the best sample is kept.
    alone: dict[LayerKey, list[float]] = {k: [] for k in keys}
    chain: dict[LayerKey, list[float]] = {k: [] for k in keys}
    context_ms: dict[_Context, list[float]] = {c: [] for c in contexts}
    with _reusing_conversions(profiler):
        overheads = [time_ms("overhead 0", overhead_module, (1,))]
        for round_index in range(rounds):
            measured: set[_Context] = set()
            for index, key in enumerate(keys):
                if round_index == rounds // 2 and index == len(keys) // 2:
                    overheads.append(time_ms("overhead 1", overhead_module, (1,)))
                # Context ops are timed next to the first layer that needs them, so both see
                # the same load.
                for context in _contexts(key):
                    if context not in measured:
                        measured.add(context)
                        timing_id = f"{round_index} context {context}"
                        module = context_modules[context]
                        context_ms[context].append(time_ms(timing_id, module, context[1]))
                timing_id = f"{round_index} alone {key}"
                alone[key].append(time_ms(timing_id, layers[key], key.input_shape))
                timing_id = f"{round_index} chain {key}"
                chain[key].append(time_ms(timing_id, sandwiches[key], key.input_shape))
        while len(overheads) < _OVERHEAD_SAMPLES:
            overheads.append(time_ms(f"overhead {len(overheads)}", overhead_module, (1,)))
    entries = {}
    for key in keys:
        before, after = _contexts(key)
        a, b = min(alone[key]), min(chain[key])
        c_in, c_out = (min(context_ms[c]) for c in (before, after))
        entries[key] = LUTEntry(
            latency_ms=(a + b - c_in - c_out) / 2, alone_ms=a, chain_ms=b, repeats=repeats
        )
    return LatencyLUT(
        entries=entries,
        overhead_ms=min(overheads),
        backend=backend,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        rounds=rounds,
        precision=DEPLOYED if quantized else HOST_PRECISION,
        host=host,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


_Context = tuple[str, tuple[int, ...], str]


def _contexts(key: LayerKey) -> tuple[_Context, _Context]:
    """(kind, shape, precision) of the context ops before and after ``key``'s group."""
    return (
        (key.kind, key.input_shape, key.precision),
        (key.kind, key.output_shape, key.precision),
    )


def measure_models(
    models: Sequence[tuple[nn.Module, tuple[int, ...]]],
    *,
    backend: Literal["onnxruntime", "torch", "executorch", "litert"] = "onnxruntime",
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    rounds: int = 3,
    seed: int = 0,
    quantized: bool | None = None,
    remote: RemoteProfile | None = None,
    journal: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[float]]:
    """Whole-model latencies (ms) timed the way :func:`build_lut` times layers.

    ``models``: ``(model, input_shape)`` pairs. Each round times every model once
    (:class:`MeasuredProfile` median of ``repeats`` runs after ``warmup``), in a new order
    shuffled with ``random.Random(seed)``, so a slow phase of the machine hits different models
    in different rounds. Returns the per-round medians of each model, in round order; the
    reference latency of a model is the smallest of them (see :func:`build_lut`).
    ``quantized``, ``remote`` and ``journal``: as in :func:`build_lut` (a journal's model
    timings are keyed by round and position in ``models``).
    """
    check_int(rounds, name="rounds", where="measure_models", minimum=1)
    profiler, _ = _profiler(remote, backend, warmup, repeats, threads, quantized)
    time_ms = _timer(
        profiler,
        TimingJournal(journal),
        remote=remote is not None,
        total=rounds * len(models),
        progress=progress,
    )
    rng = random.Random(seed)
    timings: list[list[float]] = [[] for _ in models]
    with _reusing_conversions(profiler):
        for round_index in range(rounds):
            order = list(range(len(models)))
            rng.shuffle(order)
            for i in order:
                model, shape = models[i]
                timings[i].append(time_ms(f"model {round_index} {i}", model, shape))
    return timings


def _reusing_conversions(profiler: Any) -> contextlib.AbstractContextManager:
    """The profiler's :meth:`~MeasuredProfile.reusing_conversions` where it has one."""
    reuse = getattr(profiler, "reusing_conversions", None)
    return reuse() if reuse is not None else contextlib.nullcontext()


def _distinct_keys(items: Iterable[Any], *, precision: str) -> list[LayerKey]:
    """The distinct keys of ``items``, models traced at ``precision``; a key the host cannot
    run at that precision is an error."""
    allowed = {HOST_PRECISION, INT8} if precision == DEPLOYED else {HOST_PRECISION}
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ValueError(
            "The 'items' parameter of build_lut must be an iterable of LayerKey or "
            f"(model, input_shape) pairs. Got {items!r} instead."
        )
    seen: dict[LayerKey, None] = {}
    for item in items:
        if isinstance(item, LayerKey):
            found = [item]
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], nn.Module):
            traced = model_layers(item[0], input_shape=item[1], precision=precision)
            found = [r.key for r in traced.layers if r.key is not None]
        else:
            raise ValueError(
                "The 'items' parameter of build_lut must hold LayerKey objects or "
                f"(nn.Module, input_shape) pairs. Got {item!r} instead."
            )
        for key in found:
            if key.precision not in allowed:
                raise ValueError(
                    f"The 'items' parameter of build_lut must only hold keys at precision "
                    f"{sorted(allowed)} (what this host runs with quantized="
                    f"{precision == DEPLOYED}). Got {key} instead."
                )
            seen.setdefault(key, None)
    return list(seen)


# ----------------------------------------------------------------------------- search spaces
def joint_space(
    space_config: SpaceConfig | Mapping[str, Any],
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> JointSearchSpace:
    """The :class:`JointSearchSpace` of a space config (or its mapping form) at one input shape
    and class count, ready for :func:`autocompress.spaces.sampling.sample_candidates`."""
    from autocompress.spaces import JointSearchSpace, SpaceConfig

    config = space_config
    if not isinstance(config, SpaceConfig):
        config = SpaceConfig.model_validate(dict(space_config))
    return JointSearchSpace(config, num_classes=num_classes, input_shape=input_shape)


def layer_shapes_of_space(
    space_config: SpaceConfig | Mapping[str, Any],
    *,
    data_shape: tuple[int, ...],
    num_classes: int,
    n_samples: int,
    seed: int,
    precision: str = DEPLOYED,
) -> list[LayerKey]:
    """Distinct host layer keys of ``n_samples`` candidates of a search space (first-seen order),
    traced at ``precision`` (:data:`DEPLOYED`: int8 or fp32 by each layer's bits, for a
    quantized LUT; :data:`HOST_PRECISION` for a float one).

    Each candidate is built compressed (pruned channels are what the host runs), then traced
    with :func:`model_layers`. Random sampling covers the space's layer shapes only in
    proportion to ``n_samples``; layers of later candidates that were never drawn are LUT misses.
    """
    from autocompress.compression.apply import build_compressed
    from autocompress.spaces.sampling import sample_candidates

    shape = check_input_shape(data_shape, caller="layer_shapes_of_space")
    check_int(num_classes, name="num_classes", where="layer_shapes_of_space", minimum=1)
    check_int(n_samples, name="n_samples", where="layer_shapes_of_space", minimum=1)
    space = joint_space(space_config, input_shape=shape, num_classes=num_classes)
    keys: dict[LayerKey, None] = {}
    for candidate in sample_candidates(space, n=n_samples, seed=seed):
        model = build_compressed(candidate, num_classes=num_classes, input_shape=shape)
        for record in model_layers(model, input_shape=shape, precision=precision).layers:
            if record.key is not None:
                keys.setdefault(record.key, None)
    return list(keys)
