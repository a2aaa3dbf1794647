import hashlib
import json
import math
import re
from pathlib import Path

import pytest
from torch import nn

from autocompress.hardware_profiles import (
    LatencyLUT,
    LayerKey,
    LUTProfile,
    import_lut_csv,
    model_layers,
)
from autocompress.hardware_profiles.lut_table import BITS_PRECISION

_HEADER = (
    "in_channels,out_channels,kernel_size,stride,padding,groups,in_height,in_width,"
    "w_bits,a_bits,latency_ms"
)
# A 3->8 3x3 conv on 8x8 and an 8->10 Linear (1x1 conv on a 1x1 input), each at w8a8 and w4a8.
_ROWS = [
    "3,8,3,1,1,1,8,8,8,8,0.050",
    "3,8,3,1,1,1,8,8,4,8,0.030",
    "8,10,1,1,0,1,1,1,8,8,0.010",
    "8,10,1,1,0,1,1,1,4,8,0.007",
]


def _csv(tmp_path, rows=_ROWS, header=_HEADER, name="table.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _tiny_model(bits: int) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    for layer in (model[0], model[5]):
        layer.w_bits, layer.a_bits = bits, 8
    return model


def test_import_round_trips_into_the_lut_profile_by_bits(tmp_path):
    path = _csv(tmp_path)
    lut = import_lut_csv(path)
    assert len(lut) == 4 and lut.precision == BITS_PRECISION and not lut.fused
    assert lut.source["rows"] == 4
    assert lut.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    saved = lut.save(tmp_path / "lut.json")
    data = json.loads(saved.read_text())
    assert data["source"]["file"] == str(path) and data["backend"] == "imported"
    again = LatencyLUT.load(saved)
    assert again.entries == lut.entries and again.source == lut.source

    profile = LUTProfile(lut=saved)
    m8 = profile.profile(_tiny_model(8), input_shape=(3, 8, 8))
    m4 = profile.profile(_tiny_model(4), input_shape=(3, 8, 8))
    assert m8.details["misses"] == m4.details["misses"] == 0
    assert m8.latency_ms == pytest.approx(0.050 + 0.010)
    assert m4.latency_ms == pytest.approx(0.030 + 0.007)
    assert "@w4a8" in m4.details["layers"][0]["key"]
    assert math.isnan(m8.energy_mj)  # the table gives no energy


def test_a_layer_at_bits_the_table_lacks_is_a_miss(tmp_path):
    profile = LUTProfile(lut=import_lut_csv(_csv(tmp_path)))
    with pytest.raises(ValueError, match="not in the LUT.*@w2a8"):
        profile.profile(_tiny_model(2), input_shape=(3, 8, 8))
    priced = LUTProfile(lut=import_lut_csv(_csv(tmp_path)), fallback="cortex_a72")
    metrics = priced.profile(_tiny_model(2), input_shape=(3, 8, 8))
    assert metrics.details["misses"] == 2


def test_energy_column_is_summed_when_every_layer_has_one(tmp_path):
    rows = [f"{row},{e}" for row, e in zip(_ROWS, ("0.5", "0.3", "0.1", "0.05"), strict=True)]
    lut = import_lut_csv(_csv(tmp_path, rows=rows, header=_HEADER + ",energy_mj"))
    metrics = LUTProfile(lut=lut).profile(_tiny_model(4), input_shape=(3, 8, 8))
    assert metrics.energy_mj == pytest.approx(0.3 + 0.05)


def test_header_order_spaces_bom_and_identical_duplicates_are_accepted(tmp_path):
    header = "latency_ms, a_bits,w_bits,in_width,in_height,groups,padding,stride,kernel_size," + (
        "out_channels,in_channels"
    )
    rows = ["0.05,8,8,8,8,1,1,1,3,8,3", "", "0.05,8,8,8,8,1,1,1,3,8,3"]
    path = tmp_path / "bom.csv"
    path.write_text("\ufeff" + "\n".join([header, *rows]) + "\n", encoding="utf-8")
    lut = import_lut_csv(path)
    (key,) = lut.keys()
    assert (key.in_channels, key.out_channels, key.w_bits, key.a_bits) == (3, 8, 8, 8)
    assert lut.layer_ms(key) == 0.05 and lut.source["rows"] == 2


def test_version_1_luts_still_load(tmp_path):
    key = LayerKey(
        kind="linear",
        in_channels=4,
        out_channels=2,
        kernel=(),
        stride=(),
        padding=(),
        dilation=(),
        groups=1,
        input_size=(),
        bn=False,
        act="none",
        precision="fp32",
    )
    old_key = {k: v for k, v in key.as_dict().items() if k not in ("w_bits", "a_bits")}
    entry = {"key": old_key, "latency_ms": 0.1, "alone_ms": 0.2, "chain_ms": 0.3, "repeats": 5}
    data = {
        "format": "autocompress-latency-lut",
        "version": 1,
        "backend": "torch",
        "threads": 1,
        "warmup": 0,
        "repeats": 5,
        "overhead_ms": 0.01,
        "entries": [entry],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    lut = LatencyLUT.load(path)
    assert lut.fused and lut.source is None and lut.layer_ms(key) == 0.1
    assert (lut.keys()[0].w_bits, lut.keys()[0].a_bits) == (32, 32)
    # A float model still finds its layer in a host LUT: bits do not enter its keys.
    model = nn.Linear(4, 2)
    model.w_bits, model.a_bits = 4, 8
    assert model_layers(model, input_shape=(4,)).layers[0].key == key
    assert LUTProfile(lut=lut).profile(model, input_shape=(4,)).details["hits"] == 1


_BAD_ROWS = [
    # (rows, row number, column, words the message must contain)
    (["3,8,3,1,1,1,8,8,8,8,fast"], 2, "latency_ms", "number"),
    (["3,8,3,1,1,1,8,8,8,8,-0.1"], 2, "latency_ms", "> 0"),
    (["3,8,3,1,1,1,8,8,8,8,nan"], 2, "latency_ms", "finite"),
    (["3,8,3,1,1,1,8,8,8,8,0"], 2, "latency_ms", "> 0"),
    (["3,8,3.5,1,1,1,8,8,8,8,0.1"], 2, "kernel_size", "int"),
    ([_ROWS[0], "3,8,3,1,1,1,8,8,0,8,0.1"], 3, "w_bits", "[1, 32]"),
    ([_ROWS[0], "3,8,3,1,1,1,8,8,8,33,0.1"], 3, "a_bits", "[1, 32]"),
    (["3,8,3,1,1,2,8,8,8,8,0.1"], 2, "groups", "divide"),
    (["3,8,7,1,1,1,4,8,8,8,0.1"], 2, "kernel_size", "padded input"),
    (["3,8,3,0,1,1,8,8,8,8,0.1"], 2, "stride", ">= 1"),
    (["3,8,3,1,-1,1,8,8,8,8,0.1"], 2, "padding", ">= 0"),
    (["3,8,3,1,1,1,8,8,8,8"], 2, "latency_ms", "number"),  # a short row
    ([_ROWS[0], _ROWS[1], "3,8,3,1,1,1,8,8,8,8,0.06"], 4, "latency_ms", "row 2"),
]


@pytest.mark.parametrize(("rows", "row", "column", "words"), _BAD_ROWS)
def test_bad_rows_name_the_file_row_and_column(tmp_path, rows, row, column, words):
    path = _csv(tmp_path, rows=rows)
    with pytest.raises(ValueError) as error:
        import_lut_csv(path)
    message = str(error.value)
    assert str(path) in message and f"row {row}," in message
    assert f"column '{column}'" in message and words in message


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (_HEADER + ",board_temp", "unknown column 'board_temp'"),
        (_HEADER.replace(",groups", ""), "missing column(s) ['groups']"),
        (_HEADER + ",w_bits", "column 'w_bits' appears twice"),
    ],
)
def test_bad_headers_name_the_column(tmp_path, header, words):
    path = _csv(tmp_path, header=header, rows=[])
    with pytest.raises(ValueError) as error:
        import_lut_csv(path)
    assert str(path) in str(error.value) and "row 1" in str(error.value)
    assert words in str(error.value)


def test_empty_and_extra_cells_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no data rows"):
        import_lut_csv(_csv(tmp_path, rows=[]))
    with pytest.raises(ValueError, match="row 2: 12 cells but the header names 11"):
        import_lut_csv(_csv(tmp_path, rows=[_ROWS[0] + ",7"]))
    with pytest.raises(ValueError, match="existing CSV file"):
        import_lut_csv(tmp_path / "nowhere.csv")


def test_the_guides_example_table_imports(tmp_path):
    guide = Path(__file__).parents[2] / "docs" / "guide" / "hardware-profiles.md"
    (block,) = re.findall(r"```csv\n(.*?)```", guide.read_text(), re.S)
    path = tmp_path / "my_device.csv"
    path.write_text(block)
    lut = import_lut_csv(path)
    assert len(lut) == 4 and {(k.w_bits, k.a_bits) for k in lut.keys()} == {(8, 8), (4, 4)}
