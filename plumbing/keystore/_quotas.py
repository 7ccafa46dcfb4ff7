"""`Quotas`: the limits on one key's requests, counted from the usage ledger."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Quotas"]


@dataclass(frozen=True)
class Quotas:
    """Request and token limits of one key; None = no limit of that kind.

    `requests_per_minute` counts the requests started in the last 60 s (any status);
    `tokens_per_day` the prompt plus completion tokens of the requests started since the
    current UTC day began.
    """

    requests_per_minute: int | None = None
    tokens_per_day: int | None = None

    @property
    def limited(self) -> bool:
        """Whether any limit is set (admission then counts from the ledger)."""
        return self.requests_per_minute is not None or self.tokens_per_day is not None
