"""`Keystore`: the keys, admissions and usage ledger of one database, one transaction per call."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from plumbing.keystore import _admission, _keys, _ledger
from plumbing.keystore._admission import Admission
from plumbing.keystore._database import connect, database_url
from plumbing.keystore._keys import KeyRecord, parse_key
from plumbing.keystore._ledger import EndStatus, UsageOutcome, UsageRecord, UsageSource, UsageTotal
from plumbing.keystore._quotas import Quotas
from plumbing.keystore._tables import metadata
from plumbing.settings import MeshSettings

__all__ = ["Keystore"]


class Keystore:
    """Keys, quotas and the ledger in one database. Thread-safe; every method commits."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

    @classmethod
    def open(cls, url: str) -> Keystore:
        """Opens (creating tables if needed) the database at a SQLAlchemy `url`."""
        return cls(connect(url))

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> Keystore:
        """Opens the database the shared settings name."""
        return cls.open(database_url(settings))

    def close(self) -> None:
        """Closes every pooled connection."""
        self._engine.dispose()

    # --- keys -----------------------------------------------------------------------------

    def create_key(
        self,
        owner: str,
        *,
        allowed_models: Iterable[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_day: int | None = None,
        service: bool = False,
        api_key: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """Creates a key; returns the full key (shown once, never stored) and its record.

        `api_key` stores that key instead of a new random one (see `_keys.insert_key`).
        """
        with self._engine.begin() as connection:
            return _keys.insert_key(
                connection,
                owner,
                allowed_models=allowed_models,
                requests_per_minute=requests_per_minute,
                tokens_per_day=tokens_per_day,
                service=service,
                api_key=api_key,
            )

    def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._engine.connect() as connection:
            return _keys.select_keys(connection)

    def revoke_key(self, key_id: str) -> bool:
        """Revokes a key; False when no active key has this id."""
        with self._engine.begin() as connection:
            return _keys.revoke_key(connection, key_id)

    def authenticate(self, api_key: str) -> KeyRecord:
        """The record of a valid, active key; raises `InvalidKey`."""
        key_id, secret = parse_key(api_key)
        with self._engine.connect() as connection:
            return _keys.verified_key(connection, key_id, secret)

    # --- admission and ledger ---------------------------------------------------------------

    def admit(
        self,
        api_key: str,
        model: str,
        *,
        source: UsageSource,
        request_id: str | None = None,
        default_quotas: Quotas | None = None,
    ) -> Admission:
        """Checks the key, its model permission and quotas, and opens the request's ledger row.

        A key without quotas of its own is held to `default_quotas` (None = no limit); a key
        with its own is held to those alone. Raises `InvalidKey`, `ModelNotAllowed` or
        `QuotaExhausted`. The caller must `finish` the returned entry exactly once, however
        the request ends.
        """
        key_id, secret = parse_key(api_key)
        with self._engine.begin() as connection:
            return _admission.admit(
                connection,
                key_id,
                secret,
                model,
                source=source,
                request_id=request_id,
                default_quotas=default_quotas,
            )

    def finish(
        self,
        entry_id: int,
        *,
        status: EndStatus,
        prompt_tokens: int,
        completion_tokens: int,
        request_id: str | None = None,
        queued_ms: float | None = None,
        time_to_first_token_ms: float | None = None,
        total_ms: float | None = None,
    ) -> bool:
        """Completes a running ledger row; False when it was already finished (no change)."""
        values = _ledger.ending(
            status=status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finished_at=datetime.now(UTC),
            request_id=request_id,
            queued_ms=queued_ms,
            time_to_first_token_ms=time_to_first_token_ms,
            total_ms=total_ms,
        )
        with self._engine.begin() as connection:
            return _ledger.complete_entry(connection, entry_id, values)

    def record_outcomes(self, outcomes: Iterable[UsageOutcome]) -> None:
        """Writes the ends of many requests in one transaction (one commit).

        Running rows are completed unless already finished (no change then, as `finish`);
        outcomes without a row are inserted whole.
        """
        with self._engine.begin() as connection:
            _ledger.write_outcomes(connection, outcomes)

    def usage_records(
        self,
        *,
        key_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageRecord]:
        """Ledger rows (optionally of one key, started in [since, until)), oldest first."""
        with self._engine.connect() as connection:
            return _ledger.select_records(connection, key_id=key_id, since=since, until=until)

    def usage_totals(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[UsageTotal]:
        """Totals per key and model of the requests started in [since, until)."""
        with self._engine.connect() as connection:
            return _ledger.select_totals(connection, since=since, until=until)
