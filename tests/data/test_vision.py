"""What the torchvision-backed datasets share: the root check and the lazy torchvision import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.data import DataConfig, load_data


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "imagefolder"])
def test_nonexistent_root_is_reported(tmp_path: Path, dataset: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="'data.root'") as err:
        load_data(DataConfig(dataset=dataset, root=missing), seed=0)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


def test_root_that_is_a_file_is_reported(tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        load_data(DataConfig(dataset="mnist", root=file), seed=0)


def test_missing_torchvision_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import torchvision` (and its submodules) fail.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    for name in [m for m in sys.modules if m.startswith("torchvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install autocompress\[vision\]"):
        load_data(DataConfig(dataset="mnist", root=tmp_path), seed=0)


def test_importing_the_module_does_not_import_torchvision() -> None:
    code = "import sys, autocompress.data; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
