"""The routing file's `default_quotas` (gateway/routing.py): parsed into the keystore's
`Quotas`, optional, and refused at load with the entry named when invalid; the README's
routing-file example loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.routing import DEFAULT_MODEL, RoutingError, load_routing
from plumbing.keystore import Quotas

README = Path(__file__).resolve().parents[3] / "README.md"
MODELS = f"models:\n  {DEFAULT_MODEL}: {{backend: self_hosted}}\n"


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return load_routing(path).default_quotas


def test_default_quotas_are_parsed(tmp_path: Path) -> None:
    text = "default_quotas: {requests_per_minute: 60, tokens_per_day: 100000}\n" + MODELS
    assert _load(tmp_path, text) == Quotas(requests_per_minute=60, tokens_per_day=100_000)
    assert _load(tmp_path, "default_quotas: {tokens_per_day: 5}\n" + MODELS) == Quotas(
        tokens_per_day=5
    )


def test_no_default_quotas_without_the_section_or_the_file(tmp_path: Path) -> None:
    assert _load(tmp_path, MODELS) is None
    assert _load(tmp_path, "default_quotas: null\n" + MODELS) is None
    assert load_routing(None).default_quotas is None


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ("{requests_per_minute: 0}", "default_quotas.requests_per_minute"),
        ("{tokens_per_day: -5}", "default_quotas.tokens_per_day"),
        ("{requests_per_minute: '10'}", "default_quotas.requests_per_minute"),
        ("{requests_per_minute: 1.5}", "default_quotas.requests_per_minute"),
        ("{requests_per_minute: true}", "default_quotas.requests_per_minute"),
        ("{requests_per_hour: 10}", "default_quotas.requests_per_hour"),
        ("{}", "default_quotas"),
        ("[10]", "default_quotas"),
    ],
)
def test_invalid_default_quotas_name_the_entry(tmp_path: Path, section: str, named: str) -> None:
    with pytest.raises(RoutingError, match=re.escape(named)) as refused:
        _load(tmp_path, f"default_quotas: {section}\n" + MODELS)
    assert str(tmp_path / "models.yaml") in str(refused.value)


def test_the_readme_routing_file_example_loads(tmp_path: Path) -> None:
    configuration = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"^```yaml\n(.*?)^```$", configuration, re.MULTILINE | re.DOTALL)
    path = tmp_path / "models.yaml"
    path.write_text(example)
    table = load_routing(path)
    assert table.default_quotas is not None and table.default_quotas.limited
    assert table.self_hosted() and table.external()
