"""A service command with an invalid setting stops at start: status 2 and one message naming
the setting, before it connects to anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshctl.main import main


@pytest.mark.parametrize(
    ("command", "variable", "field"),
    [
        ("scheduler", "LLM_MESH_SCHEDULER_TLS_CERTFILE", "tls_keyfile"),
        ("worker", "LLM_MESH_WORKER_MAX_N", "max_n"),
        ("gateway", "LLM_MESH_GATEWAY_TLS_CERTFILE", "tls_keyfile"),
    ],
)
def test_an_invalid_setting_stops_the_command_naming_it(
    command: str,
    variable: str,
    field: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    for name in list(os.environ):
        if name.startswith("LLM_MESH_"):
            monkeypatch.delenv(name)
    certificate = tmp_path / "cert.pem"
    certificate.write_text("not used: the key file is missing")
    value = "0" if variable.endswith("MAX_N") else str(certificate)
    monkeypatch.setenv(variable, value)
    # An unreachable broker: reaching it would fail differently (and slowly).
    monkeypatch.setenv("LLM_MESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    arguments = [command, "--model", "m"] if command == "worker" else [command]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"llm-mesh {command}: invalid configuration: ")
    assert field in error
