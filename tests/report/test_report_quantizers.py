"""The per-layer figure and the trials summary name each layer's weight quantizer where a run
uses non-uniform ones, and nothing new where not; the space card lists the quantizers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from autocompress.core.trials import candidate_summary
from autocompress.report.figures import layer_bars_data, plot_layer_bars


def _candidate(layers: dict[str, dict]) -> dict:
    return {"version": 1, "family": "small_cnn", "arch": {}, "layers": layers}


def _frame(candidates: list[dict]) -> pd.DataFrame:
    n = len(candidates)
    return pd.DataFrame(
        {
            "number": list(range(n)),
            "state": ["COMPLETE"] * n,
            "candidate": [json.dumps(c) for c in candidates],
            "summary": [candidate_summary(c) for c in candidates],
        }
    )


PLAIN = {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0}
FLOAT = {"w_bits": 32, "a_bits": 32, "prune_ratio": 0.0}


def test_summary_names_each_layers_quantizer_only_when_some_are_non_uniform() -> None:
    plain = _candidate({"a": PLAIN, "b": PLAIN, "fc": FLOAT})
    assert "Q=" not in candidate_summary(plain)
    mixed = _candidate(
        {"a": {**PLAIN, "quantizer": "pot"}, "b": {**PLAIN, "quantizer": "codebook"}, "c": PLAIN}
        | {"d": {**PLAIN, "quantizer": "apot"}, "fc": FLOAT}
    )
    assert candidate_summary(mixed).endswith(" Q=pcua-")


def test_layer_bars_carry_the_quantizer_and_draw_it(tmp_path: Path) -> None:
    df = _frame(
        [
            _candidate({"a": PLAIN, "fc": PLAIN}),
            _candidate({"a": {**PLAIN, "quantizer": "apot"}, "fc": PLAIN}),
        ]
    )
    assert layer_bars_data(df, trial=0).quantizer == ("uniform", "uniform")
    assert layer_bars_data(df, trial=1).quantizer == ("apot", "uniform")
    assert "Q=au" in layer_bars_data(df, trial=1).summary
    path = plot_layer_bars(df, tmp_path / "bars.png", trial=1)
    assert path.read_bytes().startswith(b"\x89PNG")
