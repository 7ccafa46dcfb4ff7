"""The routing file (gateway/routing.py): validation names the entry; defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.routing import DEFAULT_MODEL, RoutingError, load_routing


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_default_without_file() -> None:
    table = load_routing(None)
    assert list(table) == [DEFAULT_MODEL]
    assert table.self_hosted() == [DEFAULT_MODEL]


def test_valid_file_with_fallback_chain(tmp_path: Path) -> None:
    table = load_routing(
        _write(
            tmp_path,
            """
models:
  local: {backend: self_hosted, default_priority: batch}
  gpt:
    backend: openai
    upstream_model: gpt-4o-mini
    base_url: http://127.0.0.1:9/v1
    api_key_env: OPENAI_API_KEY
    fallback: local
""",
        )
    )
    assert [name for name, _ in table.chain("gpt")] == ["gpt", "local"]
    assert table.external() == ["gpt"]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("models:\n  a: {backend: vllm}\n", "models.a.backend"),
        ("models:\n  a: {backend: self_hosted, colour: red}\n", "models.a.colour"),
        ("models:\n  a: {backend: openai}\n", "models.a"),
        ("models:\n  a: {backend: self_hosted, api_key_env: X}\n", "models.a"),
        ("models:\n  a: {backend: self_hosted, fallback: b}\n", "models.a.fallback"),
        (
            "models:\n  a: {backend: self_hosted, fallback: b}\n"
            "  b: {backend: self_hosted, fallback: a}\n",
            "models.a.fallback",
        ),
        ("models: {}\n", "models"),
        ("models: [\n", "models.yaml"),
    ],
)
def test_invalid_file_names_the_entry(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(RoutingError, match=named.replace(".", r"\.")):
        load_routing(_write(tmp_path, text))
