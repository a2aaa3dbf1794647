"""The quickstart config, run in full: the acceptance figures of the foundation issue."""

from pathlib import Path

from autocompress.config import load_config
from autocompress.search import run_search

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"


def test_quickstart_gives_a_real_wide_front(tmp_path):
    result = run_search(load_config(QUICKSTART), runs_dir=tmp_path)
    front, teacher = result.front, result.teacher_metrics["accuracy"]
    assert teacher > 0.95
    assert len(front) >= 5
    assert front["accuracy"].max() >= teacher - 0.03
    assert front["size_kb"].max() / front["size_kb"].min() >= 4
    # The budget did its job: candidates over it were never trained and are off the front.
    over = result.trials[~result.trials["feasible"]]
    assert len(over) > 0 and not over["trained"].any()
    assert (front["size_kb"] <= 16).all()
