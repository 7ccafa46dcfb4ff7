"""API keys, quotas and the usage ledger, shared by the gateway and the scheduler's interceptor.

Keys look like `lm-<key id>.<secret>` (DESIGN.md, "API keys"); the database keeps the key id
and the SHA-256 of the secret, never the secret (`_keys`).

The ledger has one row per admitted request: `admit` inserts it (status `running`) in the same
transaction that checks the key's quotas (`_admission`), `finish` completes it exactly once with
the tokens and status (`ok`, `error`, `cancelled`). Each is committed before it returns, so a
crash loses no finished request's record. Quotas are counted from the ledger, so every gateway
replica and scheduler sharing the database sees the same numbers; a caller may pass default
quotas for keys without quotas of their own (the gateway's, from the routing file). A request
held to no quota needs no row while it runs: `record_outcomes` writes such requests' rows whole
when they end, and completes running rows, many in one transaction (one commit: the gateway's
group commit).

The database is SQLite in `data_dir` by default (WAL, synchronous=FULL) or PostgreSQL when
`LLM_MESH_DATABASE_URL` is a `postgresql://` DSN (driver psycopg 3; `_database`). The API is
synchronous; async callers run it with `asyncio.to_thread`.

Modules: `_tables` (schema), `_keys` (format, creation, verification), `_quotas` (the limits),
`_admission` (model permission and quotas), `_ledger` (usage rows and totals), `_database` (URL
and connection), `_store` (`Keystore`, one transaction per call), `_errors` (refusals).
"""

from plumbing.keystore._admission import Admission
from plumbing.keystore._database import database_url
from plumbing.keystore._errors import InvalidKey, KeystoreError, ModelNotAllowed, QuotaExhausted
from plumbing.keystore._keys import KEY_PREFIX, KeyRecord, parse_key
from plumbing.keystore._ledger import UsageOutcome, UsageRecord, UsageStatus, UsageTotal
from plumbing.keystore._quotas import Quotas
from plumbing.keystore._store import Keystore

__all__ = [
    "KEY_PREFIX",
    "Admission",
    "InvalidKey",
    "KeyRecord",
    "Keystore",
    "KeystoreError",
    "ModelNotAllowed",
    "QuotaExhausted",
    "Quotas",
    "UsageOutcome",
    "UsageRecord",
    "UsageStatus",
    "UsageTotal",
    "database_url",
    "parse_key",
]
