"""benchmarks/technique_ablation.py runs end to end (--quick: 3 trials, 1-epoch fine-tunes): the
quickstart model, today's space against all techniques, on one device, with one shared
reference point, the printed table and ablation.csv."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


@pytest.fixture
def module(monkeypatch):
    """benchmarks/technique_ablation.py, imported."""
    # The benchmark may put benchmarks/ and the example's folder on sys.path: undone after.
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = BENCHMARKS / "technique_ablation.py"
    spec = importlib.util.spec_from_file_location("technique_ablation", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "technique_ablation", module)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_and_writes_the_hypervolume_of_each_variant(tmp_path, module, capsys):

    module.main(
        [
            "--quick",
            "--models",
            "quickstart",
            "--variants",
            "today",
            "all",
            "--devices",
            "cortex_a72",
            "--out",
            str(tmp_path),
        ]
    )

    out = capsys.readouterr().out
    table = out[out.index("vs today") :]
    lines = {line.split()[0]: line for line in table.splitlines()[2:4]}
    assert set(lines) == {"today", "all"}
    assert lines["today"].split()[5] == "+0.0%"  # today against itself
    assert "quickstart on cortex_a72: all / today = " in out

    rows = pd.read_csv(tmp_path / "ablation.csv").set_index("variant")
    assert list(rows.index) == ["today", "all"]
    assert set(rows["model"]) == {"quickstart"} and set(rows["device"]) == {"cortex_a72"}
    for variant in ("today", "all"):
        hv = rows.loc[variant, "hypervolume"]
        assert math.isfinite(hv) and 0 < hv <= 1  # a share of the shared, normalised box
        assert rows.loc[variant, "trials"] == 3 and rows.loc[variant, "front"] >= 1
    assert rows.loc["today", "hv_ratio"] == pytest.approx(1.0)
    assert rows.loc["all", "hv_ratio"] == pytest.approx(
        rows.loc["all", "hypervolume"] / rows.loc["today", "hypervolume"]
    )
    # Every variant distilled from the one teacher trained for the model.
    assert (tmp_path / "ablation-quickstart-cortex_a72-all" / "teacher" / "model.pt").is_file()

    # --table-only searches nothing: it reads the finished runs back, same hypervolumes.
    module.main(
        ["--quick", "--models", "quickstart", "--variants", "today", "all"]
        + ["--devices", "cortex_a72", "--out", str(tmp_path), "--table-only"]
    )
    assert "teacher accuracy" not in capsys.readouterr().out
    again = pd.read_csv(tmp_path / "ablation.csv").set_index("variant")
    assert again["hypervolume"].tolist() == pytest.approx(rows["hypervolume"].tolist())
    assert again["trials"].tolist() == rows["trials"].tolist()


def test_the_user_model_gets_byo_baselines_own_arguments(tmp_path, module):
    """The user model's checkpoint and config come from byo_baselines' functions, with that
    script's command-line defaults: a quick checkpoint trains and its config parses."""
    args = module.build_parser().parse_args(["--quick", "--models", "user", "--seed", "3"])
    byo = module.byo_args(args, "jetson_orin_nano")
    assert (byo.seed, byo.quick, byo.epochs, byo.device) == (3, True, 1, "jetson_orin_nano")
    checkpoint = tmp_path / "mobilenet_v3_small.pt"
    accuracy = module.byo_module().train_checkpoint("mobilenet_v3_small", checkpoint, byo)
    assert checkpoint.is_file() and 0 <= accuracy <= 1
    config = module.byo_module().run_config("mobilenet_v3_small", checkpoint, byo)
    assert config.hardware.device == "jetson_orin_nano" and config.train.epochs == 1
