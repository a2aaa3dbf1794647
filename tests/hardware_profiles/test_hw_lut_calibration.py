import hashlib
import itertools

import numpy as np
import pytest

from autocompress.hardware_profiles import (
    DeviceSpec,
    LayerKey,
    calibrate_to_lut,
    import_lut_csv,
    load_device,
)
from autocompress.hardware_profiles.device_spec import BitScaling
from autocompress.hardware_profiles.lut_calibration import key_latency_ms
from autocompress.hardware_profiles.lut_import import CSV_COLUMNS
from autocompress.hardware_profiles.lut_table import BITS_PRECISION

# What the generated table's device really does: every calibration term away from the shipped
# cortex_a72 spec (efficiency 0.5, no depthwise penalty, int4 at int8 speed, no tiling,
# 10 us overhead, 5.5 GB/s).
_TRUTH = {
    "compute_efficiency_by_bits": {8: 0.3, 16: 0.45},
    "layer_efficiency": {"depthwise": 0.15},
    "bit_scaling": BitScaling(exponent=1.0, saturation_bits=4),
    "channel_tile": 16,
    "layer_overhead_s": 2e-5,
    "memory_bandwidth_bytes_per_s": 2e9,
}


def _table(tmp_path, truth: DeviceSpec, *, noise: float, seed: int = 0, bits=(2, 4, 8, 16)):
    """A CSV of 18 layers (dense and depthwise) per bit-width of ``bits`` (72 by default)
    priced on ``truth``, times seeded noise of +-``noise``."""
    rng = np.random.default_rng(seed)
    lines = [",".join(CSV_COLUMNS)]
    for c, k, size, depthwise, b in itertools.product(
        (8, 24, 40), (1, 3), (4, 32), (False, True), bits
    ):
        if depthwise and k == 1:
            continue
        out, groups = (c, c) if depthwise else (2 * c, 1)
        key = LayerKey(
            kind="conv",
            in_channels=c,
            out_channels=out,
            kernel=(k, k),
            stride=(1, 1),
            padding=(k // 2, k // 2),
            dilation=(1, 1),
            groups=groups,
            input_size=(size, size),
            bn=False,
            act="none",
            precision=BITS_PRECISION,
            w_bits=b,
            a_bits=b,
        )
        ms = key_latency_ms(truth, key) * (1 + rng.uniform(-noise, noise))
        row = (c, out, k, 1, k // 2, groups, size, size, b, b, f"{ms:.9g}")
        lines.append(",".join(map(str, row)))
    path = tmp_path / "table.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibration_recovers_the_terms_of_a_known_device(tmp_path):
    base = load_device("cortex_a72")
    truth = base.model_copy(update=_TRUTH)
    path = _table(tmp_path, truth, noise=0.02)
    lut_path = import_lut_csv(path).save(tmp_path / "lut.json")

    result = calibrate_to_lut(base, lut_path, holdout=0.3, seed=0, name="board")
    spec = result.spec
    assert spec.compute_efficiency_by_bits[8] == pytest.approx(0.3, rel=0.1)
    assert spec.compute_efficiency_by_bits[16] == pytest.approx(0.45, rel=0.1)
    assert spec.layer_efficiency["depthwise"] == pytest.approx(0.15, rel=0.1)
    assert spec.bit_scaling.saturation_bits == 4
    assert spec.bit_scaling.exponent == pytest.approx(1.0, abs=0.1)
    assert spec.channel_tile == 16
    assert spec.layer_overhead_s == pytest.approx(2e-5, rel=0.2)
    assert spec.memory_bandwidth_bytes_per_s == pytest.approx(2e9, rel=0.2)
    # Untouched: what the table cannot tell.
    assert spec.peak_macs_per_s == base.peak_macs_per_s and spec.compute_efficiency == 0.5

    # On layers it never saw, the calibrated spec is as good as the noise allows; the
    # shipped one is not.
    assert result.heldout_after.within_10pct >= 0.95 > 0.5 > result.heldout_before.within_10pct
    assert result.heldout_after.kendall_tau > 0.95
    assert (result.heldout_after.n, result.fit_after.n) == (22, 50)  # 30% of 72 held out

    record = spec.calibration
    assert record.table == str(lut_path) and record.base_device == "cortex_a72"
    assert record.table_sha256 == hashlib.sha256(lut_path.read_bytes()).hexdigest()
    assert (record.holdout, record.seed, record.rows, record.fit_rows) == (0.3, 0, 72, 50)
    assert record.metrics["heldout_calibrated"]["within_10pct"] >= 0.95
    assert DeviceSpec.model_validate(spec.model_dump()) == spec


def test_the_held_out_draw_follows_the_seed(tmp_path):
    base = load_device("cortex_a72")
    lut = import_lut_csv(_table(tmp_path, base.model_copy(update=_TRUTH), noise=0.0))
    a, b, c = (calibrate_to_lut(base, lut, holdout=0.5, seed=s) for s in (0, 0, 1))
    assert a.heldout_after == b.heldout_after != c.heldout_after
    full = calibrate_to_lut(base, lut, holdout=0.0)
    assert full.heldout_after is None and full.spec.calibration.fit_rows == len(lut)
    assert full.fit_after.within_10pct == 1.0  # noise-free: the truth is in the model class


def test_bad_arguments_are_named(tmp_path):
    base = load_device("cortex_a72")
    lut = import_lut_csv(_table(tmp_path, base, noise=0.0))
    with pytest.raises(ValueError, match="'holdout' parameter"):
        calibrate_to_lut(base, lut, holdout=1.0)
    with pytest.raises(ValueError, match="'spec' parameter"):
        calibrate_to_lut("cortex_a72", lut)
    with pytest.raises(ValueError, match="existing JSON file"):
        calibrate_to_lut(base, tmp_path / "missing.json")
    with pytest.raises(ValueError, match="at least 2"):
        calibrate_to_lut(base, lut, holdout=0.001)


def test_a_bit_flexible_device_keeps_its_own_bit_scaling(tmp_path):
    # Bit Fusion scales with the bits itself; 32-bit layers run above its widest fusion
    # width (16) and share compute_efficiency.
    base = load_device("bitfusion")
    truth = base.model_copy(
        update={
            "compute_efficiency": 0.4,
            "compute_efficiency_by_bits": {4: 0.6, 8: 0.5},
            "layer_overhead_s": 3e-6,
        }
    )
    lut = import_lut_csv(_table(tmp_path, truth, noise=0.0, bits=(4, 8, 32)))
    spec = calibrate_to_lut(base, lut, holdout=0.0).spec
    assert spec.bit_scaling is None and spec.compute_efficiency == pytest.approx(0.4, rel=1e-3)
    assert spec.compute_efficiency_by_bits == pytest.approx({4: 0.6, 8: 0.5}, rel=1e-3)
