"""The quickstart config: the acceptance figures of the foundation issue. Its front meets them
from 20 trials on (13 Pareto-optimal points at 20), so the test stops at 20 of the config's 60:
the whole run takes minutes on a 2-core CI machine, and the search is the same up to there."""

from pathlib import Path

import pytest

from autocompress.config import load_config
from autocompress.search import run_search

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"

pytestmark = pytest.mark.slow


def test_quickstart_gives_a_real_wide_front(tmp_path):
    config = load_config(QUICKSTART)
    search = config.search.model_copy(update={"n_trials": 20})
    result = run_search(config.model_copy(update={"search": search}), runs_dir=tmp_path)
    front, teacher = result.front, result.teacher_metrics["accuracy"]
    assert teacher > 0.95
    assert len(front) >= 5
    assert front["accuracy"].max() >= teacher - 0.03
    assert front["size_kb"].max() / front["size_kb"].min() >= 4
    # Candidates over the size budget (if the sampler drew any) were never trained and are off
    # the front; tests/search/test_run.py forces such candidates and checks this in detail.
    over = result.trials[result.trials["size_kb"] > 16]
    assert not over["feasible"].any() and not over["trained"].any()
    assert (front["size_kb"] <= 16).all()
