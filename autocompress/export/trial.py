"""Export a chosen trial: its candidate as YAML, its compressed model as JSON spec + state_dict,
an artefact in the asked format (ONNX with QDQ, TorchScript, bit-packed weights, an ExecuTorch
program for XNNPACK, or LiteRT), and a verification of that artefact against the PyTorch
candidate (``export_report.json``).

The model exported is the trained candidate as saved by the search: already physically pruned,
with its fake-quant state. ``finetune_epochs`` first continues its QAT + distillation training.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import islice
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..compression.apply import build_compressed
from ..compression.quantization import prepare_for_state_
from ..compression.serialization import SPEC_FILE, WEIGHTS_FILE, load_model, save_model
from ..config import RunConfig, load_config
from ..core.rundir import RunDir
from ..data import DataBundle, load_data, make_loaders
from ..evaluators.train import TrainEvaluator, resolve_device
from ..hardware_profiles.graph import model_size_bytes
from ..search.setup import evaluator_context
from ..spaces import Candidate, JointSearchSpace
from .metadata import onnx_metadata, preprocessing_record
from .verify import (
    EXECUTORCH_LOWERING,
    INTEGER_KERNELS,
    TIMING_THREADS,
    TOLERANCES,
    Runner,
    VerifyReport,
    build_report,
    compare_outputs,
    onnx_runner,
    onnx_runtime_label,
    onnxruntime_ops,
    time_runner,
    torch_runner,
    within,
)

EXPORT_FORMATS = ("onnx", "torchscript", "state-dict", "executorch", "litert")
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
EXECUTORCH_FILE = "model.pte"
LITERT_FILE = "model.tflite"
# Training batches (of data.batch_size) the ExecuTorch export's int8 ranges are calibrated on:
# as many as the PTQ evaluator's default.
CALIBRATION_BATCHES = 8
REPORT_FILE = "export_report.json"


@dataclass(frozen=True)
class FinetuneResult:
    """The task's primary metric ``metric`` before and after ``epochs`` more epochs."""

    epochs: int
    score_before: float
    score_after: float
    train_seconds: float
    metric: str = "accuracy"


@dataclass(frozen=True)
class ExportResult:
    """``metric``: the task's primary metric (accuracy for classification);
    ``recorded_score``: its value in the search's record of the trial; ``reproduced_score``:
    the exported artefact's on the validation split (after fine-tuning, if any);
    ``preprocessing``: how to prepare an input (:func:`~.metadata.preprocessing_record`)."""

    out_dir: Path
    recorded_score: float
    reproduced_score: float
    metric: str = "accuracy"
    format: str = "state-dict"
    artefact: Path | None = None
    report: VerifyReport | None = None
    finetune: FinetuneResult | None = None
    preprocessing: dict[str, Any] | None = None


@dataclass
class _Written:
    """One artefact on disk and how to run and time it."""

    path: Path
    files: list[Path]
    runner: Runner
    latency_ms: float
    latency_runtime: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # What the artefact is judged against, when not the candidate itself (see _executorch).
    reference: nn.Module | None = None


def trial_dir(run_dir: Path, trial: int) -> Path:
    directory = RunDir(run_dir).trial_dir(trial)
    if not (directory / SPEC_FILE).is_file():
        raise FileNotFoundError(
            f"Trial {trial} of {str(run_dir)!r} has no saved model: it failed, was over the "
            "hardware budget (never trained), or the run had search.save_models: false. "
            "`autocompress pareto RUN` lists the trials on the front."
        )
    return directory


def export_trial(
    run_dir: Path,
    *,
    trial: int,
    out_dir: Path | None = None,
    format: str = "state-dict",
    finetune_epochs: int = 0,
) -> ExportResult:
    """Export trial ``trial`` of ``run_dir`` to ``out_dir`` (default ``RUN/export/trial_N``).

    Always written: ``candidate.yaml``, ``spec.json`` + ``model.pt`` (the candidate, reloadable
    with :func:`load_model`) and ``export_report.json``. Per ``format``: ``onnx`` ->
    ``model.onnx`` (QDQ, integer weights), ``torchscript`` -> ``model.torchscript.pt`` (traced
    fake-quant model), ``state-dict`` -> ``weights.bin`` + ``weights.json`` (bit-packed weights,
    see :mod:`autocompress.export.packing`), ``executorch`` -> ``model.pte`` (XNNPACK, int8 where
    the candidate has <= 8 bits, calibrated on :data:`CALIBRATION_BATCHES` training batches; see
    :mod:`autocompress.hardware_profiles.executorch_backend`), ``litert`` -> ``model.tflite``
    (int8 where the search chose <= 8 bits, float32 elsewhere, calibrated on training batches; see
    :mod:`autocompress.hardware_profiles.litert`). ``candidate.yaml``, ``export_report.json``
    and the ONNX model's metadata carry the input preprocessing
    (:mod:`autocompress.export.metadata`).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(
            f"The 'format' parameter of export_trial must be one of {list(EXPORT_FORMATS)}. "
            f"Got {format!r} instead."
        )
    if (
        isinstance(finetune_epochs, bool)
        or not isinstance(finetune_epochs, Integral)
        or finetune_epochs < 0
    ):
        raise ValueError(
            "The 'finetune_epochs' parameter of export_trial must be an int >= 0. "
            f"Got {finetune_epochs!r} instead."
        )
    source = trial_dir(run_dir, trial)
    out_dir = out_dir or RunDir(run_dir).export_dir(trial)
    config = load_config(RunDir(run_dir).config_file)
    model, spec = load_model(source)
    candidate = Candidate.from_dict(spec["candidate"])
    input_shape = tuple(spec["input_shape"])
    task = config.make_task()
    recorded = float(spec["metrics"][task.primary])
    data = load_data(config.data, seed=config.seed)
    train_loader, val_loader = make_loaders(
        data, batch_size=config.data.batch_size, num_workers=0, seed=config.seed
    )
    preprocessing = preprocessing_record(data)

    metrics = dict(spec["metrics"])
    finetune = None
    if finetune_epochs > 0:
        finetune = _finetune(run_dir, config, model, candidate, data, epochs=finetune_epochs)
        metrics |= {
            task.primary: finetune.score_after,
            f"search_{task.primary}": recorded,
            "finetune_epochs": finetune_epochs,
        }
    model = model.cpu().eval()
    save_model(
        out_dir,
        model,
        candidate=candidate,
        num_classes=spec["num_classes"],
        input_shape=input_shape,
        metrics=metrics,
    )
    (out_dir / "candidate.yaml").write_text(
        yaml.safe_dump(
            {
                "run": config.name,
                "trial": trial,
                "metrics": metrics,
                "data": config.data.model_dump(mode="json"),
                "preprocessing": preprocessing,
                "candidate": spec["candidate"],
            },
            sort_keys=False,
        )
    )

    # The reference is the candidate reloaded from what was written, so the check covers the
    # export as it stands on disk, not an in-memory model.
    reference, _ = load_model(out_dir)
    reference.eval()
    writer = {
        "onnx": partial(_onnx, metadata=onnx_metadata(preprocessing)),
        "torchscript": _torchscript,
        "state-dict": _state_dict,
        "executorch": partial(
            _executorch,
            calibration=lambda: [
                task.split(batch)[0] for batch in islice(train_loader, CALIBRATION_BATCHES)
            ],
            seed=config.seed,
            task=task,
        ),
        "litert": partial(
            _litert, calibration=(task.split(batch)[0].numpy() for batch in train_loader)
        ),
    }[format]
    written = writer(out_dir, reference, candidate, spec, val_loader)
    judged = reference if written.reference is None else written.reference
    report = build_report(
        format=format,
        artefact=written.path,
        files=written.files,
        comparison=compare_outputs(written.runner, judged, val_loader, task=task),
        predicted_bytes=model_size_bytes(reference),
        recorded_score=float(metrics[task.primary]),
        measured_latency_ms=written.latency_ms,
        latency_runtime=written.latency_runtime,
        predicted_latency_ms=float(metrics.get("latency_ms", float("nan"))),
        predicted_latency_target=_prediction_target(config),
        layers=written.layers,
        checks=written.checks,
        notes=written.notes,
    )
    document = {
        "run": config.name,
        "trial": trial,
        "finetune": None if finetune is None else asdict(finetune),
        "preprocessing": preprocessing,
        **report.to_dict(),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(document, indent=2, allow_nan=True))
    return ExportResult(
        out_dir=out_dir,
        recorded_score=recorded,
        reproduced_score=report.exported_score,
        metric=task.primary,
        format=format,
        artefact=written.path,
        report=report,
        finetune=finetune,
        preprocessing=preprocessing,
    )


def _finetune(
    run_dir: Path,
    config: RunConfig,
    model: nn.Module,
    candidate: Candidate,
    data: DataBundle,
    *,
    epochs: int,
) -> FinetuneResult:
    """More QAT + distillation epochs with the run's training settings and its cached teacher."""
    device = resolve_device(config.train.device)
    teacher_dir = RunDir(run_dir).teacher_dir
    if not (teacher_dir / SPEC_FILE).is_file():
        raise FileNotFoundError(
            f"Fine-tuning needs the run's teacher, but {str(teacher_dir)!r} holds no saved model "
            f"({SPEC_FILE} is missing)."
        )
    teacher, _ = load_model(teacher_dir, map_location=device)
    _, val_loader = make_loaders(
        data, batch_size=config.data.batch_size, num_workers=0, seed=config.seed
    )
    task = config.make_task()
    before = task.evaluate(model, val_loader, device=device)[task.primary]
    space = JointSearchSpace(
        config.space, num_classes=data.num_classes, input_shape=data.input_shape
    )
    context = evaluator_context(
        config, data=data, space=space, device=device, teacher=teacher, run_dir=None
    )
    evaluator = TrainEvaluator.from_context(context, epochs=epochs)
    tuned = evaluator.evaluate(model, candidate)
    return FinetuneResult(
        epochs, before, tuned.metrics[task.primary], tuned.train_seconds, metric=task.primary
    )


def _prediction_target(config: RunConfig) -> str:
    hw = config.hardware
    if hw.profile == "analytic":
        return f"search prediction: analytic model of {hw.device}"
    return "search prediction: measured on the search host, float kernels"


def _example(spec: dict) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((1, *spec["input_shape"]), generator=generator)


def _onnx(
    out_dir: Path,
    model: nn.Module,
    candidate: Candidate,
    spec: dict,
    val_loader,
    *,
    metadata: dict[str, str],
) -> _Written:
    from .onnx_export import dequantized_weights, export_onnx

    path = out_dir / ONNX_FILE
    shape = tuple(spec["input_shape"])
    exported = export_onnx(model, path, input_shape=shape, metadata=metadata)
    # Without onnxruntime's graph optimisations the session runs the graph as written: this
    # isolates what the export does from what onnxruntime's fusions do.
    plain = compare_outputs(onnx_runner(path, optimize=False), model, val_loader)
    expected = _fake_quant_weights(model)
    got = dequantized_weights(path)
    mismatched = [n for n in expected if n not in got or not torch.equal(expected[n], got[n])]
    runner = onnx_runner(path)
    wider = [layer.name for layer in exported.layers if layer.fallback]
    notes = []
    if wider:
        notes.append(
            f"{len(wider)} of {len(exported.layers)} layers store their weights in a wider "
            f"integer type than their bits ({', '.join(wider)}; see layers): the file is larger "
            "than the bit-packed prediction"
        )
    ops = onnxruntime_ops(path)
    integer = {op: n for op, n in ops.items() if op in INTEGER_KERNELS}
    quantized = sum(layer.weight_format != "float32" for layer in exported.layers)
    kernels = ", ".join(f"{n} {op}" for op, n in integer.items()) or "none"
    notes.append(
        f"onnxruntime integer kernels after its QDQ fusions: {kernels}, for {quantized} layers "
        "with integer weights; the others run DequantizeLinear + a float Conv/Gemm (onnxruntime "
        "fuses only the QDQ patterns it knows, typically 8-bit DQ -> Conv/MatMul -> Q, and the "
        "fake-quant model keeps layer outputs in float)"
    )
    payload = _onnx_payload_bytes(path)
    notes.append(
        f"{ONNX_FILE}: {payload:,} B of tensor data; the other {path.stat().st_size - payload:,} B "
        "are graph structure and names"
    )
    notes.append(
        "batch norm is kept after each quantized conv (not folded), as in the fake-quant model"
    )
    notes += [f"dequantized weights differ from the fake-quant in {n}" for n in mismatched]
    return _Written(
        path=path,
        files=[path],
        runner=runner,
        latency_ms=time_runner(runner, _example(spec).numpy()),
        latency_runtime=onnx_runtime_label(),
        layers=[layer.to_dict() for layer in exported.layers],
        checks={
            "weights_exact": not mismatched,
            "onnx_payload_bytes": payload,
            "onnxruntime_ops": ops,
            "max_abs_diff_unoptimized": plain.max_abs_diff,
            "argmax_agreement_unoptimized": plain.argmax_agreement,
        },
        notes=notes,
    )


def _onnx_payload_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    # raw_data is the packed payload; the few tensors stored field by field are scalars.
    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


def _fake_quant_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    from ..compression.quantization import FLOAT_BITS, QuantConv2d, QuantLinear

    return {
        name: m.quantized_weight().detach()
        for name, m in model.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear) and m.quant_enabled and m.w_bits < FLOAT_BITS
    }


def _torchscript(
    out_dir: Path, model: nn.Module, candidate: Candidate, spec: dict, val_loader
) -> _Written:
    path = out_dir / TORCHSCRIPT_FILE
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 marks torch.jit as deprecated (FutureWarning); TorchScript is still the
        # format asked for here, and the warning would only repeat that on every export.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, _example(spec))
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    runner = torch_runner(loaded)
    return _Written(
        path=path,
        files=[path],
        runner=runner,
        latency_ms=time_runner(runner, _example(spec).numpy()),
        latency_runtime=f"TorchScript (fake-quant emulated in float32) CPU, {TIMING_THREADS} "
        "thread, batch 1, this host",
        notes=[
            "TorchScript keeps float32 weights and emulates the quantization: its file is not "
            "the deployed size, and its latency includes the emulation"
        ],
    )


def _state_dict(
    out_dir: Path, model: nn.Module, candidate: Candidate, spec: dict, val_loader
) -> _Written:
    from ..hardware_profiles.measured import MeasuredProfile
    from .packing import PACKED_INDEX, packed_state_equal, read_packed, write_packed

    blob = write_packed(out_dir, model)
    state = read_packed(out_dir)
    # Rebuilt from spec.json + the packed weights alone (model.pt is not read).
    rebuilt = build_compressed(
        candidate, num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"])
    )
    prepare_for_state_(rebuilt, state)
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    profile = MeasuredProfile(backend="onnxruntime", threads=TIMING_THREADS)
    measured = profile.profile(rebuilt, input_shape=tuple(spec["input_shape"]))
    return _Written(
        path=blob,
        files=[blob, out_dir / PACKED_INDEX, out_dir / SPEC_FILE, out_dir / WEIGHTS_FILE],
        runner=torch_runner(rebuilt),
        latency_ms=measured.latency_ms,
        latency_runtime="onnxruntime CPU as deployed via MeasuredProfile (int8 QDQ kernels for "
        f"<= 8-bit layers, fp32 for the others: {measured.details['precision_note']}), "
        f"{TIMING_THREADS} thread, batch 1, this host",
        checks={"packed_weights_exact": packed_state_equal(model, state)},
        notes=[
            "weights.bin holds the bit-packed integer weights + per-channel scales (format in "
            "autocompress/export/packing.py); model.pt is the float state_dict for reloading"
        ],
    )


class _Call(nn.Module):
    """An nn.Module face for a callable that must not be put in eval mode: the PT2E-converted
    graph of an exported program refuses ``.eval()``, and :func:`compare_outputs` calls it."""

    def __init__(self, function) -> None:
        super().__init__()
        object.__setattr__(self, "_function", function)  # not a submodule: .eval() skips it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._function(x)


def _executorch(
    out_dir: Path,
    model: nn.Module,
    candidate: Candidate,
    spec: dict,
    val_loader,
    *,
    calibration,
    seed: int,
    task,
) -> _Written:
    from ..hardware_profiles.executorch_backend import (
        FLOAT32,
        INT8,
        as_executed,
        executorch_runner,
        executorch_threads,
        executorch_version,
        lower_to_executorch,
    )

    batches: Sequence[torch.Tensor] = calibration()
    size = len(batches[0]) if batches else 0
    lowered = lower_to_executorch(
        model,
        input_shape=tuple(spec["input_shape"]),
        calibration=batches,
        calibration_source=f"{len(batches)} training batches of {size} (the run's data)",
        seed=seed,
    )
    path = out_dir / EXECUTORCH_FILE
    path.write_bytes(lowered.buffer)
    runner = executorch_runner(path)  # the file as written, not the in-memory buffer
    plan = {layer.name: layer.precision for layer in lowered.layers}
    candidate_check = compare_outputs(runner, model, val_loader, task=task)
    checks: dict[str, Any] = {
        "all_layers_delegated": all(layer.delegated for layer in lowered.layers),
        "ops_outside_delegate": lowered.ops_outside_delegate,
        "int8_layers": lowered.int8_layers,
        "float_layers": lowered.float_layers,
        "widened_layers": lowered.widened_layers,
        "candidate_max_abs_diff": candidate_check.max_abs_diff,
        "candidate_argmax_agreement": candidate_check.argmax_agreement,
        "candidate_score": candidate_check.reference_score,
        "calibration": lowered.calibration,
    }
    if lowered.quantized_reference is not None:
        converted = lowered.quantized_reference
        lowering = compare_outputs(runner, _Call(converted), val_loader, task=task)
        checks["pt2e_max_abs_diff"] = lowering.max_abs_diff
        checks["pt2e_argmax_agreement"] = lowering.argmax_agreement
        checks["pt2e_within_tolerance"] = within(lowering, EXECUTORCH_LOWERING)
    with executorch_threads(TIMING_THREADS) as threads:
        latency = time_runner(runner, _example(spec).numpy())
    notes = [
        "judged against the fake-quant candidate at the precision the program executes (its "
        f"weights; int8 layers' inputs quantized at 8 bits, {FLOAT32} layers' not quantized): "
        f"max |diff| <= {TOLERANCES['executorch'].rel:g} x logit range and argmax agreement >= "
        f"{TOLERANCES['executorch'].min_argmax_agreement:.0%}; checks candidate_* compare with "
        "the candidate as searched (not judged), checks pt2e_* with the PT2E-converted model "
        f"in PyTorch (<= {EXECUTORCH_LOWERING.rel:g} x range, >= "
        f"{EXECUTORCH_LOWERING.min_argmax_agreement:.0%}); see autocompress/export/verify.py",
        f"{len(lowered.int8_layers)} of {len(plan)} layers run {INT8} in XNNPACK, "
        f"{len(lowered.float_layers)} run {FLOAT32} (see layers)",
        "batch norm is folded into the conv weights before int8 quantization (PT2E), and the "
        "int8 ranges are calibrated anew: the scales differ from the fake-quant's",
        f"{EXECUTORCH_FILE} has a fixed batch of 1; verification runs it once per sample",
    ]
    widened = lowered.widened_layers
    if widened:
        notes.append(
            f"{len(widened)} layer(s) requested fewer than 8 bits and executed as int8 "
            f"({', '.join(widened)}): XNNPACK has no narrower kernels, so the program computes a "
            "wider model than the one the search scored, and is larger than the prediction"
        )
    return _Written(
        path=path,
        files=[path],
        runner=runner,
        latency_ms=latency,
        latency_runtime=f"ExecuTorch {executorch_version()} XNNPACK delegate CPU, {threads} "
        f"thread{'s' * (threads != 1)}, batch 1, this host",
        layers=[layer.to_dict() for layer in lowered.layers],
        checks=checks,
        notes=notes,
        reference=as_executed(model, plan),
    )


def _litert(
    out_dir: Path,
    model: nn.Module,
    candidate: Candidate,
    spec: dict,
    val_loader,
    *,
    calibration: Iterable[np.ndarray],
) -> _Written:
    from ..hardware_profiles.litert import (
        convert_litert,
        deployable_copy,
        litert_runner,
        litert_versions,
    )

    path = out_dir / LITERT_FILE
    converted = convert_litert(
        model, input_shape=tuple(spec["input_shape"]), calibration=calibration
    )
    path.write_bytes(converted.content)
    # The file as written is what is run and timed.
    runner = litert_runner(path.read_bytes(), threads=TIMING_THREADS)
    # The float model that was converted: against it the difference is the int8 conversion
    # alone, without the layers that run at more bits than the fake-quant model.
    source = compare_outputs(runner, deployable_copy(model), val_loader)
    layers = converted.layers
    counts = converted.precision_counts()
    split = ", ".join(f"{n} {precision}" for precision, n in sorted(counts.items()))
    widened = [layer.name for layer in layers if layer.precision == "int8" and layer.note]
    notes = [
        f"{LITERT_FILE} takes a float32 input of shape {list(converted.input_shape)} "
        f"({converted.input_layout}, as the PyTorch model) and returns float32 logits: "
        "litert-torch transposes to LiteRT's NHWC kernels inside the model, and the int8 "
        "model quantizes its input and dequantizes its output itself",
        f"layers by precision: {split}. int8 = int8 activations (per tensor) and int8 weights "
        "(symmetric, per output channel) from ai-edge-quantizer, calibrated on "
        f"{converted.calibration_samples} training samples; the weights are the candidate's "
        "fake-quant weights; batch norm is folded into the conv by the converter",
    ]
    if widened:
        notes.append(
            f"{len(widened)} layer(s) asked for fewer than 8 bits and executed as int8 "
            f"({', '.join(widened)}): LiteRT has no kernels below 8 bits, so the file is larger "
            "than the bit-packed prediction and the layer computes more precisely than the "
            "fake-quant model it is compared with"
        )
    return _Written(
        path=path,
        files=[path],
        runner=runner,
        latency_ms=time_runner(runner, _example(spec).numpy()),
        latency_runtime=f"LiteRT interpreter + XNNPACK CPU ({litert_versions()}), "
        f"{TIMING_THREADS} thread, batch 1, this host; {split} layers",
        layers=[layer.to_dict() for layer in layers],
        checks={
            "max_abs_diff_float_source": source.max_abs_diff,
            "argmax_agreement_float_source": source.argmax_agreement,
            "input_layout": converted.input_layout,
            "input_shape": list(converted.input_shape),
            "layers_by_precision": counts,
            "layers_not_as_requested": [
                layer.name for layer in layers if layer.precision != layer.requested
            ],
        },
        notes=notes,
    )


__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "FinetuneResult",
    "LITERT_FILE",
    "REPORT_FILE",
    "export_trial",
    "trial_dir",
]
