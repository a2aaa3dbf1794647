"""Export of non-uniform weights: the packed state-dict and the ONNX graph both give back the
fake-quant weights bit for bit, with b-bit indices plus the level table (and scales)."""

import json
import math

import numpy as np
import onnx
import pytest
import torch

from autocompress.compression.apply import build_compressed
from autocompress.export.onnx_export import dequantized_weights, export_onnx
from autocompress.export.packing import (
    PackedWeight,
    packed_state_equal,
    packed_weights,
    read_packed,
    write_packed,
)
from autocompress.export.verify import TOLERANCES, onnx_runner
from autocompress.spaces import Candidate, build_model, conv_linear_layers
from autocompress.spaces.candidate import LayerChoice

ARCH = {"channels": [8, 16, 16], "kernels": [3, 5, 3], "strides": [1, 2, 1]}
INPUT_SHAPE = (1, 8, 8)


def _model(choices: list[LayerChoice]):
    names = conv_linear_layers(
        build_model(Candidate("small_cnn", ARCH), num_classes=10, input_shape=INPUT_SHAPE)
    )
    layers = dict(zip(names, choices, strict=True))
    candidate = Candidate("small_cnn", ARCH, layers)
    model = build_compressed(candidate, num_classes=10, input_shape=INPUT_SHAPE)
    model.train()
    for seed in range(3):  # calibrate activation ranges, BN statistics and the codebooks
        model(2 * torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed)))
    return model.eval(), candidate


MIXED = [
    LayerChoice(w_bits=3, a_bits=8, quantizer="pot"),
    LayerChoice(w_bits=4, a_bits=6, quantizer="apot"),
    LayerChoice(w_bits=2, a_bits=8, quantizer="codebook"),
    LayerChoice(w_bits=5, a_bits=8, quantizer="codebook"),
]


def _fake_quant(model) -> dict[str, torch.Tensor]:
    return {
        n: m.quantized_weight().detach()
        for n, m in model.named_modules()
        if hasattr(m, "quantized_weight")
    }


@pytest.mark.parametrize("quantizer", ["pot", "apot", "codebook"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_weight_of_a_layer_decodes_bit_for_bit(quantizer, bits):
    model, _ = _model([LayerChoice(w_bits=bits, a_bits=8, quantizer=quantizer)] * 4)
    for name, module in model.named_modules():
        if not hasattr(module, "quantized_weight"):
            continue
        packed = PackedWeight.from_layer(module)
        assert packed.quantizer == quantizer and packed.levels.numel() <= 2**bits
        assert packed.data.numel() == math.ceil(module.weight.numel() * bits / 8)
        assert (packed.scale is None) == (quantizer == "codebook")
        assert torch.equal(packed.dequantized(), module.quantized_weight().detach()), name


def test_codebook_state_dict_export_round_trips_bit_for_bit(tmp_path):
    model, candidate = _model(MIXED)
    blob = write_packed(tmp_path, model)
    state = read_packed(tmp_path)
    assert packed_state_equal(model, state)
    expected = _fake_quant(model)
    for name, weight in expected.items():
        assert torch.equal(state[f"{name}.weight"], weight), name
    index = json.loads((tmp_path / "weights.json").read_text())
    entries = index["tensors"]
    codebook = entries[f"{list(expected)[2]}.weight"]
    assert codebook["quantizer"] == "codebook" and "scale_offset" not in codebook
    assert codebook["levels_nbytes"] == 4 * 2**2 and codebook["bits"] == 2
    assert entries[f"{list(expected)[0]}.weight"]["quantizer"] == "pot"
    assert index["version"] == 1 and blob.stat().st_size > 0
    # A model rebuilt from the candidate and the packed weights computes the same weights.
    rebuilt = build_compressed(candidate, num_classes=10, input_shape=INPUT_SHAPE)
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    for name, weight in _fake_quant(rebuilt).items():
        assert torch.equal(weight, expected[name]), name
    x = torch.randn(16, *INPUT_SHAPE, generator=torch.Generator().manual_seed(5))
    assert torch.equal(rebuilt(x), model(x))
    assert set(packed_weights(model)) == {f"{n}.weight" for n in expected}


def test_onnx_gathers_non_uniform_weights_that_equal_the_fake_quant_exactly(tmp_path):
    model, _ = _model(MIXED)
    path = tmp_path / "m.onnx"
    exported = export_onnx(model, path, input_shape=INPUT_SHAPE)
    quantizers = [layer.quantizer for layer in exported.layers]
    assert quantizers == ["pot", "apot", "codebook", "codebook"]
    assert all(layer.weight_format == "uint8" for layer in exported.layers)
    assert (
        "Gather from a 7-entry float32 level table x per-channel scale" in exported.layers[0].note
    )
    assert exported.layers[0].to_dict()["quantizer"] == "pot"
    got = dequantized_weights(path)
    for name, weight in _fake_quant(model).items():
        assert torch.equal(got[name], weight), name
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Gather") == 4 and "DequantizeLinear" in ops  # activations stay QDQ
    inits = {t.name: t for t in graph.initializer}
    codebook = [t for n, t in inits.items() if n.endswith("weight_levels")]
    assert sorted(t.dims[0] for t in codebook) == [4, 7, 15, 32]
    x = 2 * torch.randn(128, *INPUT_SHAPE, generator=torch.Generator().manual_seed(7))
    expected = model(x).detach().numpy()
    plain = onnx_runner(path, optimize=False)(x.numpy())
    assert np.abs(plain - expected).max() <= 1e-5 * (expected.max() - expected.min())
    # onnxruntime's optimiser must not fold the weights into float constants and rewrite them
    # (batch norm folded into them, other float rounding): the graph keeps a DequantizeLinear
    # before the Gather, which it does not constant-fold.
    optimized = onnx_runner(path)(x.numpy())
    assert np.abs(optimized - expected).max() <= 1e-4 * (expected.max() - expected.min())
    assert TOLERANCES["onnx"].rel > 1e-4


def test_uniform_layers_export_exactly_as_before(tmp_path):
    model, _ = _model([LayerChoice(w_bits=4, a_bits=8)] * 4)
    exported = export_onnx(model, tmp_path / "m.onnx", input_shape=INPUT_SHAPE)
    assert all("quantizer" not in layer.to_dict() for layer in exported.layers)
    write_packed(tmp_path, model)
    text = (tmp_path / "weights.json").read_text()
    assert "quantizer" not in text and "levels_offset" not in text
