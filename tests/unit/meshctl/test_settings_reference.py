"""docs/settings.md: every setting of every service, generated, described and up to date."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from meshctl.settings_reference import SETTINGS_CLASSES, reference_markdown, settings_of

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "docs" / "settings.md"
LLM_MESH = Path(sys.executable).with_name("llm-mesh")
#: The packages whose `settings` module holds a settings class.
PACKAGES = ("plumbing", "gateway", "scheduler", "worker")


def _classes() -> list[type[BaseSettings]]:
    classes = []
    for _title, location, _reader in SETTINGS_CLASSES:
        module, _, name = location.partition(":")
        classes.append(getattr(importlib.import_module(module), name))
    return classes


def test_the_committed_reference_is_what_llm_mesh_settings_prints() -> None:
    result = subprocess.run(
        [LLM_MESH, "settings"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert REFERENCE.read_text() == result.stdout, (
        "docs/settings.md is out of date: run `.venv/bin/llm-mesh settings > docs/settings.md`"
    )


def test_every_settings_class_is_in_the_reference() -> None:
    defined = {
        cls
        for package in PACKAGES
        for _name, cls in inspect.getmembers(importlib.import_module(f"{package}.settings"))
        if inspect.isclass(cls)
        and issubclass(cls, BaseSettings)
        and cls.__module__ == f"{package}.settings"
    }
    assert defined == set(_classes())


def test_every_setting_has_one_variable_in_the_reference() -> None:
    variables = [setting.variable for settings in _classes() for setting in settings_of(settings)]
    assert len(variables) == len(set(variables))
    reference = reference_markdown()
    for variable in variables:
        assert f"| `{variable}` |" in reference


def test_every_row_has_a_type_a_default_and_a_description() -> None:
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    assert len(rows) > 60
    for row in rows:
        key, type_, default, description = (cell.strip() for cell in row.strip("|").split(" | "))
        assert type_ and default and description, f"{key}: a cell is empty"


def test_the_reference_does_not_depend_on_who_generates_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    expected = reference_markdown()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert reference_markdown() == expected
    assert "| `LLM_MESH_DATA_DIR` | path | `~/.local/share/llm-mesh` |" in expected


def test_the_readme_links_the_reference() -> None:
    assert "(docs/settings.md)" in (ROOT / "README.md").read_text()
