"""Importing a per-layer latency table measured or simulated elsewhere (a CSV file) as a LUT.

The CSV has one row per layer and a header naming its columns (any order):

=============== ===========================================================================
column          meaning
=============== ===========================================================================
in_channels     input channels (int >= 1); a Linear layer's input features
out_channels    output channels (int >= 1); a Linear layer's output features
kernel_size     square kernel side (int >= 1); 1 for a Linear layer
stride          stride of both spatial dims (int >= 1); 1 for a Linear layer
padding         zero padding of each side (int >= 0); 0 for a Linear layer
groups          conv groups (int >= 1, divides both channel counts); in_channels: depthwise
in_height       input height (int >= 1); 1 for a Linear layer
in_width        input width (int >= 1); 1 for a Linear layer on a plain vector, n for one
                applied at n positions (tokens)
w_bits          weight bits (int, 1..32; 32 is float)
a_bits          input activation bits (int, 1..32; 32 is float)
latency_ms      the layer's latency in milliseconds (number > 0), with whatever the device
                fuses into it (bias, folded BatchNorm, activation)
energy_mj       optional: the layer's energy in millijoules (number >= 0; a cell may be empty)
=============== ===========================================================================

A Linear layer is a 1x1 conv on a 1 x 1 input (1 x n for n positions). Row numbers in errors
count the header as row 1, as a spreadsheet does. Every row becomes one :class:`LUTEntry` of a
LUT keyed by geometry and bits (:data:`BITS_PRECISION`, ``fused`` False), so the ``lut``
profile prices a 4-bit layer by its 4-bit row.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from autocompress.hardware_profiles.lut_table import (
    BITS_PRECISION,
    IMPORTED_BACKEND,
    LatencyLUT,
    LayerKey,
    LUTEntry,
)

__all__ = ["CSV_COLUMNS", "OPTIONAL_CSV_COLUMNS", "import_lut_csv"]

#: Columns every table must have.
CSV_COLUMNS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "groups",
    "in_height",
    "in_width",
    "w_bits",
    "a_bits",
    "latency_ms",
)
#: Columns a table may have.
OPTIONAL_CSV_COLUMNS = ("energy_mj",)
# Smallest value of each int column, and the largest where there is one.
_INT_RANGES = {
    "in_channels": (1, None),
    "out_channels": (1, None),
    "kernel_size": (1, None),
    "stride": (1, None),
    "padding": (0, None),
    "groups": (1, None),
    "in_height": (1, None),
    "in_width": (1, None),
    "w_bits": (1, 32),
    "a_bits": (1, 32),
}
_INT = re.compile(r"[+-]?\d+(\.0*)?")


class _Row(NamedTuple):
    number: int
    key: LayerKey
    latency_ms: float
    energy_mj: float | None


def import_lut_csv(path: str | os.PathLike[str]) -> LatencyLUT:
    """Read a per-layer latency table (see the module doc for its columns) into a LUT.

    Raises ValueError naming the file, the row and the column of the first problem: an unknown
    or missing column, a value that is not a number of the column's kind or outside its range,
    groups that do not divide the channels, a kernel larger than the padded input, or a layer
    given twice with different figures (rows that repeat a layer with the same figures are
    merged). The LUT records its ``source``: the file, its SHA-256, its data rows and columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            "The 'path' parameter of import_lut_csv must be an existing CSV file. "
            f"Got {str(path)!r} instead."
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's export may start with a BOM
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err}).") from None
    records = list(enumerate(csv.reader(io.StringIO(text)), start=1))
    records = [(number, cells) for number, cells in records if any(c.strip() for c in cells)]
    if not records:
        raise ValueError(f"{path}: empty file; expected a header row with {list(CSV_COLUMNS)}.")
    header_number, header = records[0]
    columns = _check_header(path, header_number, header)
    if len(records) < 2:
        raise ValueError(f"{path}: no data rows below the header (row {header_number}).")
    rows = [_parse_row(path, number, columns, cells) for number, cells in records[1:]]
    entries = _merge(path, rows)
    return LatencyLUT(
        entries=entries,
        overhead_ms=0.0,  # the table prices layers only; a per-run cost is not in it
        backend=IMPORTED_BACKEND,
        threads=None,
        warmup=None,
        repeats=None,
        precision=BITS_PRECISION,
        fused=False,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        source={
            "file": str(path),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "rows": len(rows),
            "columns": columns,
        },
    )


def _check_header(path: Path, number: int, header: list[str]) -> list[str]:
    columns = [c.strip() for c in header]
    known = (*CSV_COLUMNS, *OPTIONAL_CSV_COLUMNS)
    for column in columns:
        if column not in known:
            raise ValueError(
                f"{path}, row {number} (header): unknown column {column!r}. Expected the columns "
                f"{list(CSV_COLUMNS)} and optionally {list(OPTIONAL_CSV_COLUMNS)}."
            )
        if columns.count(column) > 1:
            raise ValueError(f"{path}, row {number} (header): column {column!r} appears twice.")
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"{path}, row {number} (header): missing column(s) {missing}. Expected the columns "
            f"{list(CSV_COLUMNS)} and optionally {list(OPTIONAL_CSV_COLUMNS)}."
        )
    return columns


def _parse_row(path: Path, number: int, columns: list[str], cells: list[str]) -> _Row:
    def bad(column: str, rule: str, value: Any) -> ValueError:
        return ValueError(
            f"{path}, row {number}, column '{column}': {rule}. Got {value!r} instead."
        )

    if len(cells) > len(columns):
        raise ValueError(
            f"{path}, row {number}: {len(cells)} cells but the header names {len(columns)} columns."
        )
    values = dict(zip(columns, (c.strip() for c in cells), strict=False))
    ints: dict[str, int] = {}
    for column, (low, high) in _INT_RANGES.items():
        text = values.get(column, "")
        rule = f"must be an int >= {low}" if high is None else f"must be an int in [{low}, {high}]"
        if not _INT.fullmatch(text):
            raise bad(column, rule, text)
        value = int(float(text))
        if value < low or (high is not None and value > high):
            raise bad(column, rule, text)
        ints[column] = value
    text = values.get("latency_ms", "")
    latency = _number(text)
    if latency is None or latency <= 0:
        raise bad("latency_ms", "must be a finite number of milliseconds > 0", text)
    energy = None
    if text := values.get("energy_mj", ""):
        energy = _number(text)
        if energy is None or energy < 0:
            raise bad("energy_mj", "must be empty or a finite number of millijoules >= 0", text)
    groups, c_in, c_out = ints["groups"], ints["in_channels"], ints["out_channels"]
    if c_in % groups or c_out % groups:
        raise bad("groups", f"must divide in_channels ({c_in}) and out_channels ({c_out})", groups)
    k, p = ints["kernel_size"], ints["padding"]
    padded = min(ints["in_height"], ints["in_width"]) + 2 * p
    if k > padded:
        raise bad(
            "kernel_size",
            f"must fit the padded input (min(in_height, in_width) + 2 * padding = {padded})",
            k,
        )
    key = LayerKey(
        kind="conv",
        in_channels=c_in,
        out_channels=c_out,
        kernel=(k, k),
        stride=(ints["stride"],) * 2,
        padding=(p, p),
        dilation=(1, 1),
        groups=groups,
        input_size=(ints["in_height"], ints["in_width"]),
        bn=False,
        act="none",
        precision=BITS_PRECISION,
        w_bits=ints["w_bits"],
        a_bits=ints["a_bits"],
    )
    return _Row(number, key, latency, energy)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _merge(path: Path, rows: list[_Row]) -> dict[LayerKey, LUTEntry]:
    """One entry per layer; a layer given twice must have the same figures both times."""
    first: dict[LayerKey, _Row] = {}
    for row in rows:
        seen = first.setdefault(row.key, row)
        if seen is row:
            continue
        for column, a, b in (
            ("latency_ms", seen.latency_ms, row.latency_ms),
            ("energy_mj", seen.energy_mj, row.energy_mj),
        ):
            if a != b:
                raise ValueError(
                    f"{path}, row {row.number}, column '{column}': the same layer and bits as "
                    f"row {seen.number} with a different {column}. Got {b!r} here and {a!r} "
                    f"in row {seen.number}; keep one of them."
                )
    return {
        key: LUTEntry(
            latency_ms=row.latency_ms,
            alone_ms=None,
            chain_ms=None,
            repeats=None,
            energy_mj=row.energy_mj,
        )
        for key, row in first.items()
    }
