"""The scheduler's gRPC TLS settings: off by default, a certificate needs its key, the client
CA needs both, and a file that does not exist stops the settings naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from scheduler.settings import Settings


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file that exists (its content is checked at start, not here)."""
    path = tmp_path / "file.pem"
    path.write_text("PEM\n")
    return path


def test_tls_is_off_by_default() -> None:
    settings = Settings()
    assert (settings.tls_certfile, settings.tls_keyfile, settings.tls_client_ca) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("given", "missing"), [("tls_certfile", "tls_keyfile"), ("tls_keyfile", "tls_certfile")]
)
def test_one_of_the_pair_alone_is_refused_naming_the_other(
    pem: Path, given: str, missing: str
) -> None:
    with pytest.raises(ValidationError, match=f"must be set together: {missing} is not set"):
        Settings.model_validate({given: pem})


def test_a_client_ca_without_a_certificate_is_refused(pem: Path) -> None:
    with pytest.raises(ValidationError, match="tls_client_ca needs tls_certfile"):
        Settings(tls_client_ca=pem)


def test_a_missing_file_is_refused_naming_the_setting(pem: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match=r"tls_keyfile\n  Value error, .*absent.key is not a file"
    ):
        Settings(tls_certfile=pem, tls_keyfile=tmp_path / "absent.key")


def test_the_environment_turns_on_mutual_tls(pem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CERTFILE", "KEYFILE", "CLIENT_CA"):
        monkeypatch.setenv(f"LLM_MESH_SCHEDULER_TLS_{name}", str(pem))
    settings = Settings()
    assert (settings.tls_certfile, settings.tls_keyfile, settings.tls_client_ca) == (pem, pem, pem)
