"""LSQ (train.lsq): uniform weights get a learnable per-channel step with LSQ's gradient, the
exports reproduce the learned grid bit for bit, and with lsq off nothing changes."""

import math

import torch
from torch import nn

from autocompress.compression.apply import build_compressed
from autocompress.compression.quantization import (
    QuantLinear,
    enable_lsq_,
    prepare_for_state_,
    quantize_weight,
)
from autocompress.compression.serialization import load_model, save_model
from autocompress.evaluators import TrainConfig
from autocompress.export.onnx_export import dequantized_weights, export_onnx
from autocompress.export.packing import packed_state_equal, read_packed, write_packed
from autocompress.spaces import Candidate, LayerChoice

ARCH = {"channels": [8, 16], "kernels": [3, 3], "strides": [1, 2]}
SHAPE = {"num_classes": 10, "input_shape": (1, 8, 8)}


def test_lsq_starts_from_the_current_scale_and_learns_the_step():
    torch.manual_seed(0)
    layer = QuantLinear.from_float(nn.Linear(6, 3), w_bits=3, a_bits=32)
    before = layer.quantized_weight().detach()
    assert enable_lsq_(layer) == [""]
    assert torch.equal(layer.quantized_weight().detach(), before)  # same grid at the start
    layer(torch.randn(4, 6)).square().sum().backward()
    assert layer.w_step.grad is not None and bool((layer.w_step.grad != 0).any())
    # LSQ's gradient (Esser et al., eq. 3) times g: round(w/s) - w/s strictly inside the range,
    # -qmax / qmax at or beyond its ends (the channel's largest |w| sits exactly at one).
    step, w = layer.w_step.detach(), layer.weight.detach()
    g = 1 / math.sqrt(6 * 3)
    q = torch.ones_like(w)
    layer.w_step.grad = None
    (layer.quantized_weight() * q).sum().backward()
    x = w / step.view(-1, 1)
    inside = x.abs() < 3
    expected = torch.where(inside, torch.round(x) - x, torch.sign(x) * 3).sum(dim=1) * g
    assert torch.allclose(layer.w_step.grad, expected, atol=1e-6)


def test_lsq_off_changes_nothing_and_its_config_dump_is_unchanged():
    assert "lsq" not in TrainConfig().model_dump()
    assert TrainConfig(lsq=True).model_dump()["lsq"] is True
    torch.manual_seed(0)
    layer = QuantLinear.from_float(nn.Linear(6, 3), w_bits=4, a_bits=8)
    assert not hasattr(layer, "w_step")
    assert torch.equal(layer.quantized_weight(), quantize_weight(layer.weight, 4))


def test_lsq_models_save_load_and_export_bit_for_bit(tmp_path):
    layers = {
        "features.0.0": LayerChoice(w_bits=4, a_bits=8),
        "features.1.0": LayerChoice(w_bits=3, a_bits=8, quantizer="pot"),
        "classifier": LayerChoice(w_bits=5, a_bits=8),
    }
    candidate = Candidate("small_cnn", ARCH, layers)
    model = build_compressed(candidate, **SHAPE)
    assert enable_lsq_(model) == ["features.0.0", "classifier"]
    with torch.no_grad():  # a learned step away from max|w| / qmax
        model.classifier.w_step.mul_(0.7)
    model.train()
    model(torch.randn(32, *SHAPE["input_shape"]))
    model.eval()
    expected = {
        n: m.quantized_weight().detach()
        for n, m in model.named_modules()
        if hasattr(m, "quantized_weight")
    }
    assert not torch.equal(expected["classifier"], quantize_weight(model.classifier.weight, 5))
    write_packed(tmp_path / "packed", model)
    state = read_packed(tmp_path / "packed")
    assert packed_state_equal(model, state)
    rebuilt = prepare_for_state_(build_compressed(candidate, **SHAPE), state)
    rebuilt.load_state_dict(state)
    x = torch.randn(8, *SHAPE["input_shape"])
    assert torch.equal(rebuilt.eval()(x), model(x))
    save_model(tmp_path / "saved", model, candidate=candidate, **SHAPE)
    loaded, _ = load_model(tmp_path / "saved")
    assert torch.equal(loaded.eval()(x), model(x))
    export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE["input_shape"])
    got = dequantized_weights(tmp_path / "m.onnx")
    for name, weight in expected.items():
        assert torch.equal(got[name], weight), name
