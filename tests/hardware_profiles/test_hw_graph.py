import math
import pickle

import pytest
import torch
from torch import nn

from autocompress.hardware_profiles import (
    layer_costs,
    model_size_bytes,
    peak_activation_bytes,
)


def _quant(layer: nn.Module, *, w_bits: int, a_bits: int) -> nn.Module:
    """Emulate a colleague's quant layer: bit attributes plus observer buffers."""
    layer.w_bits = w_bits
    layer.a_bits = a_bits
    layer.quant_enabled = True
    layer.register_buffer("act_min", torch.tensor(-1.0))
    layer.register_buffer("act_max", torch.tensor(1.0))
    return layer


def test_float_conv_macs_and_bytes():
    (cost,) = layer_costs(nn.Conv2d(1, 4, 3, padding=1), input_shape=(1, 8, 8))
    assert cost.kind == "conv"
    assert cost.macs == 4 * 8 * 8 * 1 * 3 * 3 == 2304
    assert cost.weight_params == 36
    assert (cost.w_bits, cost.a_bits) == (32, 32)
    assert (cost.input_elems, cost.output_elems) == (64, 256)
    assert cost.weight_bytes == 36 * 4  # float: no scales
    assert cost.input_bytes == 64 * 4
    assert cost.output_bytes == 256 * 4


def test_strided_conv_macs():
    (cost,) = layer_costs(nn.Conv2d(3, 8, 3, stride=2), input_shape=(3, 32, 32))
    assert cost.output_elems == 8 * 15 * 15
    assert cost.macs == 8 * 15 * 15 * 3 * 9 == 48600
    assert cost.input_bytes == 3 * 32 * 32 * 4


def test_depthwise_conv_macs():
    (cost,) = layer_costs(nn.Conv2d(4, 4, 3, padding=1, groups=4), input_shape=(4, 8, 8))
    assert cost.macs == 4 * 8 * 8 * 1 * 9 == 2304  # in_channels / groups == 1
    assert cost.weight_params == 4 * 1 * 3 * 3


def test_transposed_conv_macs():
    (cost,) = layer_costs(nn.ConvTranspose2d(2, 3, 2, stride=2), input_shape=(2, 4, 4))
    # Non-overlapping 2x2 stride-2 kernel: each of the 3*8*8 outputs sums 2 input channels.
    assert cost.macs == 2 * 4 * 4 * 3 * 4 == 3 * 8 * 8 * 2


def test_linear_macs_with_leading_dims():
    (cost,) = layer_costs(nn.Linear(8, 5), input_shape=(3, 8))
    assert cost.kind == "linear"
    assert cost.macs == 3 * 5 * 8 == 120
    assert (cost.input_elems, cost.output_elems) == (24, 15)


def test_quantized_bytes():
    conv = _quant(nn.Conv2d(1, 4, 3, padding=1), w_bits=4, a_bits=8)
    (cost,) = layer_costs(conv, input_shape=(1, 8, 8))
    assert cost.weight_bytes == 36 * 4 // 8 + 4 * 4  # packed int4 + one fp32 scale / channel
    assert cost.input_bytes == 64  # int8 input
    assert cost.output_bytes == 256  # quantized layer: int8 output (documented assumption)
    conv.w_bits, conv.a_bits = 3, 4
    (cost,) = layer_costs(conv, input_shape=(1, 8, 8))
    assert cost.weight_bytes == math.ceil(36 * 3 / 8) + 16 == 30
    assert cost.input_bytes == 32


def test_layers_in_execution_order_with_names():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )
    costs = layer_costs(model, input_shape=(1, 8, 8))
    assert [(c.name, c.kind) for c in costs] == [("0", "conv"), ("3", "linear")]
    assert costs[1].macs == 2560


def test_shared_layer_yields_two_rows_and_counts_weights_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return self.fc(self.fc(x))

    model = Twice()
    assert [c.name for c in layer_costs(model, input_shape=(4,))] == ["fc", "fc"]
    assert model_size_bytes(model) == 16 * 4


def test_layer_costs_leaves_model_unchanged():
    model = nn.Sequential(
        _quant(nn.Conv2d(1, 4, 3, padding=1), w_bits=8, a_bits=8), nn.BatchNorm2d(4), nn.ReLU()
    )
    model.train()
    model[1].eval()  # mixed modes must come back exactly as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_costs(model, input_shape=(1, 8, 8))
    assert model.training and model[0].training and not model[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pickle.dumps(model)  # a tracing hook left behind (a local function) would not pickle


def test_model_size_bytes_hand_computed_mixed_bits():
    model = nn.Sequential(
        _quant(nn.Conv2d(1, 4, 3, padding=1), w_bits=4, a_bits=8),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        _quant(nn.Linear(256, 10), w_bits=8, a_bits=8),
    )
    conv = 36 * 4 // 8 + 4 * 4 + 4 * 4  # int4 weights + scales + fp32 bias
    bn = (4 + 4) * 4 + (4 + 4) * 4  # affine + running mean/var; no num_batches_tracked
    linear = 2560 + 10 * 4 + 10 * 4  # int8 weights + scales + fp32 bias
    assert model_size_bytes(model) == conv + bn + linear == 2754
    for m in (model[0], model[4]):
        m.w_bits = 32
    assert model_size_bytes(model) == 144 + 16 + 64 + 10240 + 40  # observers never count


def test_weights_four_times_smaller_at_8_bits():
    layer = nn.Linear(64, 16, bias=False)
    size32 = model_size_bytes(layer)
    _quant(layer, w_bits=8, a_bits=8)
    size8 = model_size_bytes(layer)
    assert size32 == (size8 - 16 * 4) * 4  # weights exactly 4x smaller, plus 16 fp32 scales
    layer.w_bits = 4
    assert model_size_bytes(layer) < size8


def test_peak_activation_bytes():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 10))
    costs = layer_costs(model, input_shape=(1, 8, 8))
    assert peak_activation_bytes(costs) == max(64 * 4 + 256 * 4, 256 * 4 + 10 * 4) == 1280
    assert peak_activation_bytes([]) == 0


@pytest.mark.parametrize("bits", [0, 33, 4.5, True, "8"])
def test_invalid_bits_raise(bits):
    layer = nn.Linear(4, 4)
    layer.w_bits = bits
    with pytest.raises(ValueError, match="'w_bits' attribute of layer"):
        layer_costs(layer, input_shape=(4,))


@pytest.mark.parametrize("shape", [(), (0, 4), (-1,), "abc", (2.5,), None])
def test_invalid_input_shape_raises(shape):
    with pytest.raises(ValueError, match="'input_shape' parameter of layer_costs"):
        layer_costs(nn.Linear(4, 4), input_shape=shape)
