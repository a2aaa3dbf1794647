"""The export says how to prepare an input: the same record in candidate.yaml, in
export_report.json and in the ONNX model's metadata; an input prepared from that record alone gets
the PyTorch model's answer."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image

from autocompress.compression.serialization import load_model
from autocompress.config import load_config
from autocompress.core.rundir import RunDir
from autocompress.data import DataBundle, DataConfig, load_data
from autocompress.data.sampling import STREAM_SPLIT, rng, stratified_split
from autocompress.export import CLASS_NAMES_KEY, PREPROCESSING_KEY, export_trial
from autocompress.export.metadata import onnx_metadata, preprocessing_record
from autocompress.export.onnx_export import export_onnx


@pytest.fixture(scope="module")
def onnx_export(finished_run, tmp_path_factory):
    trial = int(finished_run.front.iloc[0]["number"])
    out = tmp_path_factory.mktemp("onnx_preprocessing")
    return export_trial(finished_run.run_dir, trial=trial, out_dir=out, format="onnx")


def _metadata(path) -> dict[str, str]:
    return {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}


def test_the_record_is_written_to_yaml_report_and_onnx_metadata(onnx_export) -> None:
    record = onnx_export.preprocessing
    assert record["input_shape"] == [1, 8, 8] and record["num_classes"] == 10
    assert (record["color"], record["scale"]) == ("grayscale", 16.0)
    assert len(record["mean"]) == len(record["std"]) == 1
    assert record["class_names"] == [str(d) for d in range(10)]
    out = onnx_export.out_dir
    assert yaml.safe_load((out / "candidate.yaml").read_text())["preprocessing"] == record
    assert json.loads((out / "export_report.json").read_text())["preprocessing"] == record
    metadata = _metadata(out / "model.onnx")
    assert json.loads(metadata[PREPROCESSING_KEY]) == record
    assert json.loads(metadata[CLASS_NAMES_KEY]) == record["class_names"]
    assert onnx_export.report.passed


def test_raw_digits_prepared_from_the_metadata_alone_get_the_pytorch_answer(
    finished_run, onnx_export
) -> None:
    """What a deployer does: read the record from the .onnx file, apply it to raw 0..16 digit
    images, run onnxruntime; the PyTorch candidate on the data pipeline's tensors must agree."""
    import onnxruntime
    from sklearn import datasets as sklearn_datasets

    session = onnxruntime.InferenceSession(
        str(onnx_export.out_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    meta = session.get_modelmeta().custom_metadata_map
    record = json.loads(meta[PREPROCESSING_KEY])
    names = json.loads(meta[CLASS_NAMES_KEY])
    channels = record["input_shape"][0]
    mean = np.asarray(record["mean"], dtype=np.float32).reshape(channels, 1, 1)
    std = np.asarray(record["std"], dtype=np.float32).reshape(channels, 1, 1)

    config = load_config(RunDir(finished_run.run_dir).config_file)
    source = sklearn_datasets.load_digits()
    _, val_idx = stratified_split(
        source.target, val_fraction=config.data.val_fraction, rng=rng(config.seed, STREAM_SPLIT)
    )
    raw = source.images[val_idx].astype(np.float32).reshape(-1, *record["input_shape"])
    prepared = (raw / np.float32(record["scale"]) - mean) / std
    onnx_classes = session.run(None, {session.get_inputs()[0].name: prepared})[0].argmax(1)

    bundle = load_data(config.data, seed=config.seed)
    assert torch.equal(torch.from_numpy(prepared), bundle.val.tensors[0])
    model, _ = load_model(onnx_export.out_dir)
    with torch.no_grad():
        torch_classes = model.eval()(bundle.val.tensors[0]).argmax(1).numpy()
    assert (onnx_classes == torch_classes).mean() >= 0.99  # the ONNX export's own tolerance
    # Named by the recorded class names, the predictions read as the digits shown, well above
    # chance (0.1).
    predicted = np.array([names[c] for c in onnx_classes])
    assert (predicted == source.target[val_idx].astype(str)).mean() > 0.5


def test_the_guides_example_runs_and_prepares_images_as_the_loader_does(
    onnx_export, tmp_path, monkeypatch, capsys
) -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "guide" / "export.md"
    section = guide.read_text().split("## Preparing an input", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    # The example's path, as `autocompress export runs/quickstart --trial 12` would write it.
    target = tmp_path / "runs" / "quickstart" / "export" / "trial_12"
    target.mkdir(parents=True)
    shutil.copy(onnx_export.out_dir / "model.onnx", target)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(guide), "exec"), namespace)
    printed = capsys.readouterr().out.strip()
    assert len(ast.literal_eval(printed)) == 8  # eight class names

    # Its image path reproduces imagefolder's tensors: landscape and portrait noise images.
    noise = np.random.default_rng(0)
    for name, shape in (("ant", (12, 20, 3)), ("bee", (20, 12, 3))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            pixels = noise.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.png")
    config = DataConfig(dataset="imagefolder", root=tmp_path / "photos", image_size=8)
    bundle = load_data(config, seed=0)
    record = preprocessing_record(bundle)
    assert len(bundle.val) == 2  # one image of each class: both orientations
    for index in range(len(bundle.val)):
        path, _ = bundle.val.dataset.samples[bundle.val.indices[index]]
        prepared = torch.from_numpy(namespace["prepare_image"](path, record))
        assert torch.allclose(prepared, bundle.val[index][0], atol=1e-5)


def test_a_user_dataset_without_preprocessing_exports_what_is_known(
    finished_run, tmp_path, monkeypatch
) -> None:
    # The finished run with its data section pointing at user code that serves the same digits
    # through the import-string contract, which has no way to describe preprocessing.
    run = tmp_path / "run"
    shutil.copytree(finished_run.run_dir, run)
    config_file = RunDir(run).config_file
    document = yaml.safe_load(config_file.read_text())
    document["data"]["dataset"] = "acexport_userdigits:build"
    config_file.write_text(yaml.safe_dump(document, sort_keys=False))
    (tmp_path / "acexport_userdigits.py").write_text(
        textwrap.dedent(
            f"""
            from autocompress.data import DataConfig, load_data

            def build(*, root, seed):
                config = DataConfig(val_fraction={document["data"]["val_fraction"]})
                data = load_data(config, seed=seed)
                return data.train, data.val, data.num_classes, data.input_shape
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acexport_userdigits", raising=False)

    trial = int(finished_run.front.iloc[0]["number"])
    result = export_trial(run, trial=trial, out_dir=tmp_path / "out", format="onnx")
    assert result.report.passed
    known = {"input_shape": [1, 8, 8], "num_classes": 10}
    assert result.preprocessing == known
    exported = yaml.safe_load((tmp_path / "out" / "candidate.yaml").read_text())
    assert exported["preprocessing"] == known
    metadata = _metadata(tmp_path / "out" / "model.onnx")
    assert json.loads(metadata[PREPROCESSING_KEY]) == known
    assert CLASS_NAMES_KEY not in metadata  # unknown, so not written


def test_record_without_preprocessing_has_only_shape_and_class_count() -> None:
    data = DataBundle(train=[], val=[], num_classes=3, input_shape=(2, 4, 4), name="mine")
    record = preprocessing_record(data)
    assert record == {"input_shape": [2, 4, 4], "num_classes": 3}
    assert onnx_metadata(record) == {PREPROCESSING_KEY: json.dumps(record)}


def test_export_onnx_metadata_must_be_strings(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="The 'metadata' parameter of export_onnx"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 2, 2), metadata={"a": 1})
    export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 2, 2), metadata={"a": "b"})
    assert _metadata(tmp_path / "m.onnx") == {"a": "b"}
    export_onnx(model, tmp_path / "plain.onnx", input_shape=(1, 2, 2))
    assert _metadata(tmp_path / "plain.onnx") == {}
