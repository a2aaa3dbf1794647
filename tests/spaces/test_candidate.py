import json

import pytest

from autocompress.spaces import Candidate, LayerChoice


def make_candidate() -> Candidate:
    return Candidate(
        family="small_cnn",
        arch={"channels": (16, 8), "kernels": [3, 5], "strides": [1, 2]},
        layers={
            "features.0.0": LayerChoice(w_bits=4, a_bits=8, prune_ratio=0.25),
            "classifier": LayerChoice(w_bits=8, a_bits=6),
        },
    )


def test_json_round_trip_gives_an_equal_candidate():
    cand = make_candidate()
    again = Candidate.from_json(cand.to_json())
    assert again.to_dict() == cand.to_dict()
    assert again.layers["features.0.0"] == LayerChoice(4, 8, 0.25)
    assert json.loads(cand.to_json())["arch"]["channels"] == [16, 8]


def test_bits_and_prune_ratios_views():
    cand = make_candidate()
    assert cand.bits() == {"features.0.0": (4, 8), "classifier": (8, 6)}
    assert cand.prune_ratios() == {"features.0.0": 0.25}


def test_from_dict_rejects_bad_input_with_the_field_name():
    data = make_candidate().to_dict()
    data["layers"]["classifier"] = {"w_bits": "x"}
    with pytest.raises(ValueError, match="layers.classifier"):
        Candidate.from_dict(data)
    with pytest.raises(ValueError, match="version"):
        Candidate.from_dict({**make_candidate().to_dict(), "version": 99})
    with pytest.raises(ValueError, match="Unknown candidate field"):
        Candidate.from_dict({**make_candidate().to_dict(), "colour": 1})
