"""The gateway's TLS settings: its listener's pair, and TLS to the schedulers (a CA bundle,
optionally a client certificate and key for mutual TLS), each checked when the settings are
built."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file that exists (its content is checked at start, not here)."""
    path = tmp_path / "file.pem"
    path.write_text("PEM\n")
    return path


def test_tls_to_the_schedulers_is_off_by_default() -> None:
    settings = GatewaySettings()
    assert settings.scheduler_tls_ca is None and settings.scheduler_tls_certfile is None


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("tls_certfile", "tls_keyfile"),
        ("tls_keyfile", "tls_certfile"),
        ("scheduler_tls_certfile", "scheduler_tls_keyfile"),
        ("scheduler_tls_keyfile", "scheduler_tls_certfile"),
    ],
)
def test_one_of_a_pair_alone_is_refused_naming_the_other(
    pem: Path, given: str, missing: str
) -> None:
    with pytest.raises(ValidationError, match=f"must be set together: {missing} is not set"):
        GatewaySettings.model_validate({given: pem, "scheduler_tls_ca": pem})


def test_a_client_certificate_without_a_ca_is_refused(pem: Path) -> None:
    with pytest.raises(ValidationError, match="scheduler_tls_certfile needs scheduler_tls_ca"):
        GatewaySettings(scheduler_tls_certfile=pem, scheduler_tls_keyfile=pem)


def test_a_missing_ca_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match=r"scheduler_tls_ca\n  Value error, .*absent.crt is not a file"
    ):
        GatewaySettings(scheduler_tls_ca=tmp_path / "absent.crt")


def test_the_environment_names(pem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CA", "CERTFILE", "KEYFILE"):
        monkeypatch.setenv(f"LLM_MESH_GATEWAY_SCHEDULER_TLS_{name}", str(pem))
    settings = GatewaySettings()
    assert (
        settings.scheduler_tls_ca,
        settings.scheduler_tls_certfile,
        settings.scheduler_tls_keyfile,
    ) == (pem, pem, pem)
