import math

import pytest
import torch

from autocompress.compression.apply import build_compressed
from autocompress.compression.quantization import quantize_weight
from autocompress.export.packing import (
    PACKED_FILE,
    PackedWeight,
    integer_weight,
    pack_bits,
    packed_state_equal,
    read_packed,
    unpack_bits,
    write_packed,
)
from autocompress.hardware_profiles.graph import model_size_bytes
from autocompress.spaces import Candidate
from autocompress.spaces.candidate import LayerChoice


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 1001])
def test_pack_round_trip_is_exact_and_takes_ceil_n_b_over_8_bytes(bits: int, count: int) -> None:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    values = torch.randint(lo, hi + 1, (count,), generator=_gen(bits))
    if count >= 2:
        values[:2] = torch.tensor([lo, hi])  # both extremes of the two's-complement range
    packed = pack_bits(values, bits=bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(count * bits / 8)
    assert torch.equal(unpack_bits(packed, bits=bits, count=count).long(), values)


def test_bit_order_is_little_endian_as_documented() -> None:
    # 1 -> 001, -1 -> 111, 2 -> 010; LSB first: 1 0 0 | 1 1 1 | 0 1 0 -> 0b10111001, 0b0.
    assert pack_bits(torch.tensor([1, -1, 2]), bits=3).tolist() == [0xB9, 0x00]
    # 4-bit fields: element 0 in the low nibble (the same layout as ONNX INT4).
    assert pack_bits(torch.tensor([1, -2]), bits=4).tolist() == [0xE1]


def test_pack_rejects_values_outside_the_range_and_bad_bits() -> None:
    with pytest.raises(ValueError, match=r"'values' parameter of pack_bits must lie in \[-4, 3\]"):
        pack_bits(torch.tensor([4]), bits=3)
    with pytest.raises(ValueError, match="'bits' parameter of pack_bits"):
        pack_bits(torch.tensor([0]), bits=1)
    with pytest.raises(ValueError, match="integer tensor"):
        pack_bits(torch.tensor([0.5]), bits=4)
    with pytest.raises(ValueError, match="at least ceil"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), bits=4, count=3)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 12])
def test_packed_weight_dequantizes_to_the_fake_quant_weight_exactly(bits: int) -> None:
    weight = torch.randn(6, 4, 3, 3, generator=_gen(bits))
    weight[2] = 0.0  # an all-zero channel keeps scale 1
    packed = PackedWeight.from_weight(weight, bits=bits)
    assert packed.data.numel() == math.ceil(weight.numel() * bits / 8)
    integers, _ = integer_weight(weight, bits=bits)
    assert torch.equal(packed.integers(), integers)
    assert torch.equal(packed.dequantized(), quantize_weight(weight, bits))


def test_packed_model_file_rebuilds_the_model_and_is_about_the_predicted_size(tmp_path) -> None:
    arch = {"channels": [8, 16], "kernels": [3, 3], "strides": [1, 2]}
    layers = {
        "features.0.0": LayerChoice(3, 8),
        "features.1.0": LayerChoice(5, 6),
        "classifier": LayerChoice(2, 4),
    }
    candidate = Candidate("small_cnn", arch, layers)
    model = build_compressed(candidate, num_classes=10, input_shape=(1, 8, 8))
    model.train()
    model(torch.randn(32, 1, 8, 8, generator=_gen()))  # calibrate the activation ranges
    model.eval()

    write_packed(tmp_path, model)
    state = read_packed(tmp_path)
    assert packed_state_equal(model, state)
    again = build_compressed(candidate, num_classes=10, input_shape=(1, 8, 8))
    again.load_state_dict(state)
    again.eval()
    x = torch.randn(16, 1, 8, 8, generator=_gen(1))
    assert torch.allclose(again(x), model(x), rtol=0, atol=1e-6)
    # Beyond the prediction: only observer ranges and BN step counters (a few bytes per layer).
    extra = (tmp_path / PACKED_FILE).stat().st_size - model_size_bytes(model)
    assert 0 <= extra <= 64
