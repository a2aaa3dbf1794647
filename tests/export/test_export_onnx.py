import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from autocompress.compression.apply import build_compressed
from autocompress.compression.quantization import quantize_weight
from autocompress.export.onnx_export import dequantized_weights, export_onnx
from autocompress.export.verify import TOLERANCES, onnx_runner
from autocompress.spaces import Candidate, build_model, conv_linear_layers
from autocompress.spaces.candidate import LayerChoice

ARCH = {"channels": [8, 16, 16], "kernels": [3, 5, 3], "strides": [1, 2, 1]}
INPUT_SHAPE = (1, 8, 8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(bits: list[tuple[int, int]], *, family: str = "small_cnn", arch=ARCH):
    names = conv_linear_layers(
        build_model(Candidate(family, arch), num_classes=10, input_shape=INPUT_SHAPE)
    )
    layers = {name: LayerChoice(*pair) for name, pair in zip(names, bits, strict=True)}
    model = build_compressed(
        Candidate(family, arch, layers), num_classes=10, input_shape=INPUT_SHAPE
    )
    model.train()
    for seed in range(3):  # calibrate activation ranges and BN statistics
        model(2 * torch.randn(64, *INPUT_SHAPE, generator=_gen(seed)))
    return model.eval()


def _check_outputs(model, path) -> None:
    x = 2 * torch.randn(256, *INPUT_SHAPE, generator=_gen(7))
    expected = model(x).detach().numpy()
    got = onnx_runner(path)(x.numpy())
    tolerance = TOLERANCES["onnx"]
    assert np.abs(got - expected).max() <= tolerance.rel * (expected.max() - expected.min())
    agreement = (got.argmax(1) == expected.argmax(1)).mean()
    assert agreement >= tolerance.min_argmax_agreement


def _initializers(path) -> dict:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def test_8_bit_model_is_real_qdq_with_int8_weights_and_runs_in_onnxruntime(tmp_path) -> None:
    model = _model([(8, 8)] * 4)
    path = tmp_path / "m.onnx"
    exported = export_onnx(model, path, input_shape=INPUT_SHAPE)
    assert all(
        layer.weight_format == "int8" and layer.activation_format == "uint8"
        for layer in exported.layers
    )
    assert not any(layer.fallback or layer.note for layer in exported.layers)

    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 8
    assert "Clip" not in ops  # 8-bit inputs use the whole uint8 range
    inits = _initializers(path)
    for name in ("features.0.0", "features.1.0", "features.2.0", "classifier"):
        assert inits[f"{name}.weight_quantized"].data_type == TensorProto.INT8
        assert inits[f"{name}.input_zero_point"].data_type == TensorProto.UINT8
        assert f"{name}.weight" not in inits  # no float copy of a quantized weight
    weight_dq = [n for n in graph.node if n.output[0].endswith("/weight_dequantized")]
    assert all(a.i == 0 for n in weight_dq for a in n.attribute if a.name == "axis")
    _check_outputs(model, path)


def test_activation_qparams_equal_the_fake_quant_ones(tmp_path) -> None:
    from autocompress.compression.quantization import activation_qparams

    model = _model([(8, 8)] * 4)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, input_shape=INPUT_SHAPE)
    inits = _initializers(path)
    layer = model.get_submodule("features.1.0")
    scale, zero_point = activation_qparams(layer.act_min, layer.act_max, 8)
    assert numpy_helper.to_array(inits["features.1.0.input_scale"]) == scale.item()
    assert numpy_helper.to_array(inits["features.1.0.input_zero_point"]) == zero_point.item()


def test_4_bit_layer_is_stored_as_int4_and_dequantizes_to_the_fake_quant_weights(tmp_path):
    model = _model([(8, 8), (4, 8), (3, 6), (2, 4)])
    path = tmp_path / "m.onnx"
    exported = export_onnx(model, path, input_shape=INPUT_SHAPE)
    storage = {layer.name: layer for layer in exported.layers}
    assert storage["features.1.0"].weight_format == "int4"
    assert not storage["features.1.0"].fallback
    assert storage["features.2.0"].weight_format == "int4" and storage["features.2.0"].fallback
    assert "no int3 type" in storage["features.2.0"].note
    assert "Clip to levels 0..63" in storage["features.2.0"].note

    inits = _initializers(path)
    tensor = inits["features.1.0.weight_quantized"]
    assert tensor.data_type == TensorProto.INT4
    assert len(tensor.raw_data) == 16 * 8 * 5 * 5 // 2  # two values per byte
    integers = numpy_helper.to_array(tensor).astype(np.float32)
    scale = numpy_helper.to_array(inits["features.1.0.weight_scale"]).reshape(-1, 1, 1, 1)
    fake = {
        n: quantize_weight(model.get_submodule(n).weight, model.get_submodule(n).w_bits)
        for n in storage
    }
    assert np.array_equal(integers * scale, fake["features.1.0"].detach().numpy())
    # And as onnxruntime itself dequantizes them, for every layer:
    for name, weights in dequantized_weights(path).items():
        assert torch.equal(weights, fake[name].detach()), name
    _check_outputs(model, path)


def test_wide_and_float_layers_use_16_bit_qdq_int32_or_float(tmp_path) -> None:
    arch = {"hidden": [24] * 5}
    model = _model(
        [(12, 12), (20, 20), (32, 8), (8, 32), (16, 16), (32, 32)], family="mlp", arch=arch
    )
    path = tmp_path / "m.onnx"
    exported = export_onnx(model, path, input_shape=INPUT_SHAPE)
    formats = [(layer.weight_format, layer.activation_format) for layer in exported.layers]
    assert formats == [
        ("int16", "uint16"),
        ("int32", "float ops"),
        ("float32", "uint8"),
        ("int8", "float32"),
        ("int16", "uint16"),
        ("float32", "float32"),
    ]
    inits = _initializers(path)
    assert inits["features.0.input_zero_point"].data_type == TensorProto.UINT16
    assert inits["features.4.weight"].data_type == TensorProto.FLOAT  # 32-bit stays float
    for name, weights in dequantized_weights(path).items():
        layer = model.get_submodule(name)
        assert torch.equal(weights, quantize_weight(layer.weight, layer.w_bits).detach()), name
    _check_outputs(model, path)


def test_uncalibrated_activation_range_is_a_clear_error(tmp_path) -> None:
    names = conv_linear_layers(
        build_model(Candidate("small_cnn", ARCH), num_classes=10, input_shape=INPUT_SHAPE)
    )
    layers = {name: LayerChoice(8, 8) for name in names}
    model = build_compressed(
        Candidate("small_cnn", ARCH, layers), num_classes=10, input_shape=INPUT_SHAPE
    )
    with pytest.raises(ValueError, match="'features.0.0' has no calibrated activation range"):
        export_onnx(model.eval(), tmp_path / "m.onnx", input_shape=INPUT_SHAPE)


def test_nested_model_node_names_are_short_unique_module_paths(tmp_path) -> None:
    models = pytest.importorskip("torchvision.models")
    model = models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18.onnx"
    export_onnx(model, path, input_shape=(3, 32, 32))
    nodes = [n.name for n in onnx.load(str(path)).graph.node]
    assert len(set(nodes)) == len(nodes) and not any(n.startswith("/") for n in nodes)
    # Both blocks have a conv1: the full module name tells them apart.
    for name in ("layer1.0.conv1/Conv", "layer4.1.conv1/Conv", "layer2.0.downsample.0/Conv"):
        assert name in nodes
    x = torch.randn(4, 3, 32, 32, generator=_gen(3))
    np.testing.assert_allclose(
        onnx_runner(path)(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-4
    )
