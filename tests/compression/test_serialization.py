import pytest
import torch
import yaml

from autocompress.compression.serialization import load_model, save_model
from autocompress.export.trial import export_trial
from autocompress.spaces import Candidate


def test_export_reloads_and_reproduces_the_recorded_score(finished_run, tmp_path):
    best = int(finished_run.front.iloc[0]["number"])
    result = export_trial(finished_run.run_dir, trial=best, out_dir=tmp_path / "exp")
    assert result.reproduced_score == pytest.approx(result.recorded_score, abs=1e-9)
    exported = yaml.safe_load((tmp_path / "exp" / "candidate.yaml").read_text())
    assert exported["trial"] == best
    assert Candidate.from_dict(exported["candidate"]).family == "small_cnn"
    # The weights file is a plain state_dict: it loads with weights_only=True.
    state = torch.load(tmp_path / "exp" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_saved_model_round_trip_keeps_pruned_shapes_and_quant_state(finished_run, tmp_path):
    best = int(finished_run.front.iloc[0]["number"])
    model, spec = load_model(finished_run.run_dir / "trials" / str(best))
    save_model(
        tmp_path / "copy",
        model,
        candidate=Candidate.from_dict(spec["candidate"]),
        num_classes=spec["num_classes"],
        input_shape=tuple(spec["input_shape"]),
    )
    again, _ = load_model(tmp_path / "copy")
    x = torch.randn(4, *spec["input_shape"])
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))


def test_export_of_an_unsaved_trial_is_a_clear_error(finished_run):
    with pytest.raises(FileNotFoundError, match="Trial 999 .* no saved model"):
        export_trial(finished_run.run_dir, trial=999)
