"""The documentation's code runs: every ``python`` block of docs/extending.md (in order, in one
namespace, as a reader pastes them) and the README's Python API section; and the README's
links and size stay within bounds."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.slow
def test_extending_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks(ROOT / "docs" / "extending.md")
    assert len(blocks) >= 7
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/extending.md", "exec"), namespace)
    front = namespace["result"].front
    assert len(front) >= 1 and front["top3"].between(0, 1).all()
    trials = namespace["result"].trials
    assert trials["state"].eq("COMPLETE").all()
    # The registered pieces were used: the family, the profile's latency law, the sampler.
    assert trials["summary"].str.startswith("wide_mlp").all()
    assert namespace["result"].study.sampler.__class__.__name__ == "GPSampler"


@pytest.mark.slow
def test_readme_python_api_runs(tmp_path, monkeypatch, tiny_config_dict):
    # As written, on a tiny stand-in for configs/quickstart.yaml (the real one takes minutes).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    tiny_config_dict.update(name="quickstart")
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["train"]["epochs"] = 1
    (tmp_path / "configs" / "quickstart.yaml").write_text(yaml.safe_dump(tiny_config_dict))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = BLOCK.findall(section)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "quickstart" / "pareto.csv").is_file()


def test_readme_is_a_short_guide_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    assert "autocompress search configs/quickstart.yaml" in readme
    assert "python -m pytest -q\n" in readme


def test_relative_links_in_the_docs_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def _sections(text: str) -> dict[str, str]:
    """Heading of each '## ' section -> its text."""
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def test_every_config_key_is_documented_in_its_section():
    from pydantic import BaseModel

    from autocompress.config import RunConfig

    sections = _sections((ROOT / "docs" / "reference" / "config.md").read_text())

    def section(annotation) -> type[BaseModel] | None:
        # A section, or an optional one (``ModelConfig | None``).
        for kind in (annotation, *typing.get_args(annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                return kind
        return None

    def walk(model: type[BaseModel], prefix: str):
        for name, field in model.model_fields.items():
            yield prefix, name
            if (nested := section(field.annotation)) is not None:
                yield from walk(nested, f"{prefix}.{name}".lstrip("."))

    missing = []
    for prefix, key in walk(RunConfig, ""):
        heading = "Top level" if not prefix else f"`{prefix}`"  # "`train` and `teacher`" too
        text = next((t for h, t in sections.items() if heading in h), "")
        if f"| `{key}` |" not in text:
            missing.append(f"{prefix}.{key}".lstrip("."))
    assert missing == []


def test_every_command_and_option_is_documented():
    import typer.main

    from autocompress.cli import app

    sections = _sections((ROOT / "docs" / "reference" / "cli.md").read_text())
    missing = []
    group = typer.main.get_command(app)
    commands = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", {})
        commands += [(f"{name} {s}", c) for s, c in subcommands.items()] or [(name, command)]
    for name, command in commands:
        text = sections.get(name)
        if text is None:
            missing.append(name)
            continue
        for param in command.params:
            # Options, not arguments (typer's click may be vendored: no isinstance check).
            if param.param_type_name == "option" and param.opts[0] != "--help":
                if param.opts[0] not in text:
                    missing.append(f"{name} {param.opts[0]}")
    assert missing == []
