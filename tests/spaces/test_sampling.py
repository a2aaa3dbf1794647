import json

import pytest

from autocompress.spaces import JointSearchSpace, SpaceConfig
from autocompress.spaces.sampling import enumerate_candidates


def _space(**arch) -> JointSearchSpace:
    config = SpaceConfig(
        family="small_cnn",
        arch={"depths": [1, 2], "widths": [8, 16], "kernel_sizes": [3], "strides": [1, 2], **arch},
        w_bits=[2, 8],
        a_bits=[8],
        prune_ratios=[0.0, 0.5],
    )
    return JointSearchSpace(config, num_classes=10, input_shape=(1, 8, 8))


def test_every_candidate_once_with_conditional_layers():
    candidates = enumerate_candidates(_space())
    keys = {json.dumps(c.to_dict(), sort_keys=True) for c in candidates}
    assert len(keys) == len(candidates)  # no duplicates
    # Hand count. depth 1: width 2 x bits of conv0, fc (2 x 2) x prune conv0 (2) = 16.
    # depth 2: widths 2 x 2 x bits of conv0, conv1, fc (2**3) x prune conv0, conv1 (2 x 2) = 128.
    by_depth = {1: 0, 2: 0}
    for c in candidates:
        by_depth[len(c.arch["channels"])] += 1
    assert by_depth == {1: 16, 2: 128}


def test_limit():
    with pytest.raises(ValueError, match="more than 10 candidates"):
        enumerate_candidates(_space(), limit=10)
