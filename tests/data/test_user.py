"""Datasets from user code named by an import string "package.module:function"."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from autocompress.data import DataConfig, load_data


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_entry_point_is_called_with_root_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_module(
        tmp_path,
        monkeypatch,
        "acdata_good",
        """
        import torch
        from torch.utils.data import TensorDataset

        CALLS = []

        def build(*, root, seed):
            CALLS.append((root, seed))
            x = torch.zeros(12, 2, 3, 3)
            y = torch.arange(12) % 4
            return TensorDataset(x, y), TensorDataset(x[:4], y[:4]), 4, [2, 3, 3]
        """,
    )
    config = DataConfig(dataset="acdata_good:build", root=tmp_path, limit_train=5)
    bundle = load_data(config, seed=11)
    assert (bundle.num_classes, bundle.input_shape, bundle.name) == (4, (2, 3, 3), config.dataset)
    assert (len(bundle.train), len(bundle.val)) == (5, 4)
    assert bundle.preprocessing is None  # the import-string contract has no way to say
    assert sys.modules["acdata_good"].CALLS == [(tmp_path, 11)]


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        ("None", "not a 4-tuple"),
        ("(ds, ds, 3)", "not a 4-tuple"),
        ("(ds, 5, 3, (1, 2, 2))", "val_dataset has no"),
        ("(ds, ds, 0, (1, 2, 2))", "num_classes must be"),
        ("(ds, ds, 3, (1, 2))", "input_shape must be"),
        ("(ds, ds, 3, (1, 0, 2))", "input_shape must be"),
    ],
)
def test_entry_point_bad_return_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, returned: str, problem: str
) -> None:
    _write_module(
        tmp_path,
        monkeypatch,
        "acdata_bad",
        f"""
        ds = [(0, 0)]

        def build(*, root, seed):
            return {returned}
        """,
    )
    with pytest.raises(ValueError, match="'data.dataset' entry point") as err:
        load_data(DataConfig(dataset="acdata_bad:build"), seed=0)
    assert problem in str(err.value)


def test_entry_point_import_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="'data.dataset'.*importable module"):
        load_data(DataConfig(dataset="acdata_nowhere.mod:build"), seed=0)
    _write_module(tmp_path, monkeypatch, "acdata_empty", "VALUE = 1\n")
    with pytest.raises(ValueError, match="'data.dataset'.*has no 'build'"):
        load_data(DataConfig(dataset="acdata_empty:build"), seed=0)
    with pytest.raises(ValueError, match="has no callable 'VALUE'"):
        load_data(DataConfig(dataset="acdata_empty:VALUE"), seed=0)


def test_import_string_finds_a_module_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acdata_here.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import TensorDataset

            def build(*, root, seed):
                x = torch.zeros(6, 1, 2, 2)
                y = torch.arange(6) % 2
                return TensorDataset(x, y), TensorDataset(x[:2], y[:2]), 2, (1, 2, 2)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    # The import adds the current directory to sys.path; restore it after the test.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "acdata_here", raising=False)
    bundle = load_data(DataConfig(dataset="acdata_here:build"), seed=0)
    assert (bundle.name, bundle.num_classes, len(bundle.train)) == ("acdata_here:build", 2, 6)


def test_import_string_to_a_missing_function_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_module(tmp_path, monkeypatch, "acdata_nofunc", "def other(*, root, seed): ...\n")
    config = DataConfig(dataset="acdata_nofunc:build")  # naming it imports nothing yet
    with pytest.raises(ValueError, match="The 'data.dataset' field") as err:
        load_data(config, seed=0)
    assert "'build'" in str(err.value) and "acdata_nofunc" in str(err.value)
