"""Pricing of sparse layers: size counts the cheapest sparse encoding; latency and energy fall
only where the device spec declares a sparse kernel for the layer's pattern."""

import math

import pytest
import torch
from torch import nn

from autocompress.compression import quantize_
from autocompress.compression.sparsity import sparse_weight_bits, sparsify_, sparsity_mask
from autocompress.hardware_profiles.analytic import AnalyticProfile
from autocompress.hardware_profiles.device_spec import DeviceSpec, load_device
from autocompress.hardware_profiles.graph import layer_costs, model_size_bytes


def test_bitmask_encoding_wins_at_moderate_sparsity_index_at_high() -> None:
    mask = sparsity_mask(torch.rand(64, 256, generator=torch.Generator().manual_seed(0)), 0.5)
    numel, nnz = 64 * 256, 64 * 128
    # bitmask: 1 bit each + 8-bit non-zeros; CSR: 8 column bits (256 per row) + pointers
    bitmask, index = numel + nnz * 8, nnz * (8 + 8) + 65 * math.ceil(math.log2(numel + 1))
    assert bitmask < index
    assert sparse_weight_bits(mask=mask, w_bits=8, sparsity=0.5) == bitmask
    mask = sparsity_mask(torch.rand(64, 256, generator=torch.Generator().manual_seed(0)), 0.95)
    nnz = int(mask.sum())
    index = nnz * (8 + 8) + 65 * math.ceil(math.log2(numel + 1))
    assert index < numel + nnz * 8
    assert sparse_weight_bits(mask=mask, w_bits=8, sparsity=0.95) == index


def test_nm_index_is_log2_m_bits_per_kept_weight_and_never_more_than_dense() -> None:
    mask = sparsity_mask(torch.rand(8, 16), "2:4")
    # 2:4 at 4 bits: index 64 * (4 + 2) = 384 < bitmask 128 + 64 * 4 = 384 -> tie: 384
    assert sparse_weight_bits(mask=mask, w_bits=4, sparsity="2:4") == 384
    mask = sparsity_mask(torch.rand(8, 16), "1:8")
    assert sparse_weight_bits(mask=mask, w_bits=8, sparsity="1:8") == 16 * (8 + 3)
    # barely sparse 2-bit weights: both encodings exceed dense, which is kept
    mask = sparsity_mask(torch.rand(8, 16), 0.05)
    assert sparse_weight_bits(mask=mask, w_bits=2, sparsity=0.05) == 8 * 16 * 2


def _model(sparsity):
    model = nn.Sequential(
        nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)
    )
    quantize_(model, {"0": (8, 8), "2": (8, 8)})
    if sparsity != 0:
        sparsify_(model, {"2": sparsity})
    return model


def test_size_counts_the_sparse_encoding_of_sparse_layers_only() -> None:
    dense, sparse = _model(0), _model("2:4")
    saved = model_size_bytes(dense) - model_size_bytes(sparse)
    numel = 64 * 64 * 9
    # dense 8 bits vs 2:4 index: half the weights at 8 + 2 bits (scales and bias unchanged)
    assert saved == numel - math.ceil(numel // 2 * 10 / 8)
    (cost,) = [c for c in layer_costs(sparse, input_shape=(16, 8, 8)) if c.name == "2"]
    assert cost.weight_bytes == numel + 4 * 64  # latency's bytes stay dense
    assert cost.sparse_weight_bytes == math.ceil(numel // 2 * 10 / 8) + 4 * 64
    assert cost.sparsity == "2:4" and cost.sparse_aligned


def _with_sparse_kernel(spec: DeviceSpec, speedup: float) -> DeviceSpec:
    data = spec.model_dump()
    data["sparse"] = {"2:4": {"speedup": speedup, "source": "test: Ampere sparse tensor cores"}}
    return DeviceSpec.model_validate(data)


@pytest.mark.parametrize("device", ["jetson_nano", "cortex_a72"])
def test_sparse_layers_are_priced_dense_unless_the_device_declares_a_kernel(device) -> None:
    spec = load_device(device)
    dense, sparse = _model(0), _model("2:4")
    plain = AnalyticProfile(device=spec)
    a, b = (
        plain.profile(dense, input_shape=(16, 8, 8)),
        plain.profile(sparse, input_shape=(16, 8, 8)),
    )
    assert a.latency_ms == b.latency_ms and a.energy_mj == b.energy_mj
    assert b.size_bytes < a.size_bytes
    fast = AnalyticProfile(device=_with_sparse_kernel(spec, 2.0))
    c = fast.profile(sparse, input_shape=(16, 8, 8))
    assert c.latency_ms < b.latency_ms and c.energy_mj < b.energy_mj
    row = [r for r in c.details["layers"] if r["name"] == "2"][0]
    assert row["sparse_speedup"] == 2.0
    # unstructured sparsity gets no 2:4 kernel
    unstructured = fast.profile(_model(0.5), input_shape=(16, 8, 8))
    assert unstructured.latency_ms == a.latency_ms


@pytest.mark.parametrize(("device", "cheaper"), [("jetson_orin_nano", True), ("cortex_a72", False)])
def test_shipped_sparse_kernel_prices_a_2_4_layer_cheaper(device, cheaper) -> None:
    # 37.7 M MACs in the 2:4 layer: compute-bound on the Orin, so the kernel's speedup shows
    profile = AnalyticProfile(device=device)
    dense = profile.profile(_model(0), input_shape=(16, 32, 32))
    sparse = profile.profile(_model("2:4"), input_shape=(16, 32, 32))
    if cheaper:
        assert sparse.latency_ms < dense.latency_ms and sparse.energy_mj < dense.energy_mj
        row = [r for r in sparse.details["layers"] if r["name"] == "2"][0]
        assert row["sparse_speedup"] == load_device(device).sparse["2:4"].speedup
    else:  # no sparse kernel: the zeros are multiplied
        assert sparse.latency_ms == dense.latency_ms and sparse.energy_mj == dense.energy_mj


def test_device_spec_sparse_keys_must_be_nm_patterns() -> None:
    data = load_device("jetson_nano").model_dump()
    for key in ("unstructured", "4:2", "0.5"):
        data["sparse"] = {key: {"speedup": 2.0, "source": "x"}}
        with pytest.raises(ValueError, match="N:M"):
            DeviceSpec.model_validate(data)
    data["sparse"] = {"2:4": {"speedup": 0.5, "source": "x"}}
    with pytest.raises(ValueError):
        DeviceSpec.model_validate(data)
