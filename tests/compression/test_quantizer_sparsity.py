"""Non-uniform quantizers and sparsity on the same layer: PoT/APoT keep the zeros (zero is one of
their levels) through QAT, ONNX and the packed format; a codebook layer is never sparse."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from autocompress.compression import build_compressed
from autocompress.config import ConfigError, parse_config
from autocompress.evaluators.train import train_epochs
from autocompress.export.onnx_export import dequantized_weights, export_onnx
from autocompress.export.packing import packed_state_equal, read_packed, write_packed
from autocompress.export.verify import TOLERANCES, onnx_runner
from autocompress.spaces import Candidate, JointSearchSpace
from autocompress.spaces.candidate import LayerChoice

ARCH = {"channels": [8, 16], "kernels": [3, 5], "strides": [1, 2]}
INPUT_SHAPE = (1, 8, 8)


def _model():
    candidate = Candidate(
        "small_cnn",
        ARCH,
        {
            "features.0.0": LayerChoice(8, 8),
            "features.1.0": LayerChoice(4, 8, quantizer="pot", sparsity="2:4"),
            "classifier": LayerChoice(5, 8, quantizer="apot", sparsity=0.5),
        },
    )
    model = build_compressed(candidate, num_classes=10, input_shape=INPUT_SHAPE)
    g = torch.Generator().manual_seed(0)
    batches = [
        (2 * torch.randn(32, *INPUT_SHAPE, generator=g), torch.randint(0, 10, (32,), generator=g))
        for _ in range(4)
    ]
    train_epochs(model, batches, epochs=1, lr=1e-2, weight_decay=0.0, device=torch.device("cpu"))
    return model.eval()


def test_pot_and_apot_layers_keep_their_masked_zeros_through_export(tmp_path):
    model = _model()
    layers = {"features.1.0": model.features[1][0], "classifier": model.classifier}
    path = tmp_path / "m.onnx"
    export_onnx(model, path, input_shape=INPUT_SHAPE)
    exported = dequantized_weights(path)
    for name, layer in layers.items():
        quantized = layer.quantized_weight().detach()
        assert layer.weight_mask is not None and (quantized[~layer.weight_mask] == 0).all()
        assert torch.equal(exported[name].reshape(quantized.shape), quantized)
    write_packed(tmp_path / "packed", model)
    assert packed_state_equal(model, read_packed(tmp_path / "packed"))
    x = 2 * torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(5))
    expected = model(x).detach().numpy()
    got = onnx_runner(path)(x.numpy())
    spread = expected.max() - expected.min()
    assert np.abs(got - expected).max() <= TOLERANCES["onnx"].rel * spread


def test_a_codebook_layer_is_never_sparse():
    with pytest.raises(ValueError, match="dense with a codebook"):
        Candidate.from_dict(
            {
                "version": 1,
                "family": "small_cnn",
                "arch": ARCH,
                "layers": {
                    "classifier": {
                        "w_bits": 4,
                        "a_bits": 8,
                        "prune_ratio": 0.0,
                        "quantizer": "codebook",
                        "sparsity": 0.5,
                    }
                },
            }
        )
    with pytest.raises(ConfigError, match="codebook layer must be dense"):
        parse_config(
            {
                "name": "x",
                "space": {"overrides": {"classifier": {"quantizer": "codebook", "sparsity": 0.5}}},
            }
        )
    # Searched together, codebook layers get no sparsity dimension.
    config = parse_config(
        {"name": "x", "space": {"quantizers": ["codebook"], "sparsity": [0.0, 0.5]}}
    )
    space = JointSearchSpace(config.space, num_classes=10, input_shape=INPUT_SHAPE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        candidate = space.suggest(trial)
        for name, choice in candidate.layers.items():
            if choice.quantizer == "codebook":
                assert choice.sparsity == 0.0 and f"{name}.sparsity" not in trial.params
