"""The errors an external provider adapter raises before its stream has started.

Once an adapter has yielded `GenerationStart`, it never raises these: a failure after that is
in-band (`StreamError`, then `GenerationFinish`). Before it, a failure is one of these
exceptions, which the gateway turns into an HTTP status (DESIGN.md, "When the HTTP status is
decided")::

    ProviderError                 every failure an adapter raises; carries `code` (an
    |                             events_pb2.ErrorCode), `retryable` and the provider's name
    +-- ProviderClientError       the client's request is at fault; never retryable
    |   +-- ProviderRejected      the provider answered 4xx about the request (its message and
    |   |                         HTTP status are kept)
    |   +-- InvalidRequest        the adapter refused the request before sending it (e.g. a
    |                             parameter the provider cannot honour, a bad provider_extensions
    |                             entry)
    +-- ProviderUpstreamError     the provider (or our configuration of it) is at fault
        +-- ProviderUnavailable   5xx, connection failures, malformed answers, or the
        |                         provider refusing *our* credentials (401/403, Gemini's
        |                         API_KEY_INVALID), which no retry can fix (retryable=False)
        +-- ProviderTimeout       connect, read or total timeout
        +-- RateLimited           429 (with the provider's Retry-After when it sent one)

Who is at fault, decided like TensorZero's `handle_openai_error`, with one difference:
TensorZero counts 401/403 as client errors because its callers may bring their own provider
keys; here the key always comes from the routing file (`api_key_env`), so a refused key is a
mesh configuration problem, reported as a non-retryable `ProviderUnavailable` whose message does
not echo the provider's (which may quote part of the key).
"""

from __future__ import annotations

from typing import Final

from llmmesh.v1 import events_pb2

__all__ = [
    "InvalidRequest",
    "ProviderClientError",
    "ProviderError",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "ProviderUpstreamError",
    "RateLimited",
    "error_for_code",
    "error_for_status",
]


class ProviderError(Exception):
    """A failure of an external provider call, raised before the stream started.

    `code` is the `events_pb2.ErrorCode` that names it; `retryable` says whether the same
    request may succeed if sent again; `provider` is the adapter's registry name.
    """

    code: events_pb2.ErrorCode = events_pb2.ERROR_CODE_UPSTREAM_ERROR
    retryable: bool = False

    def __init__(self, message: str, *, provider: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        if retryable is not None:
            self.retryable = retryable


class ProviderClientError(ProviderError):
    """The client's request is at fault; sending it again cannot succeed."""

    code = events_pb2.ERROR_CODE_INVALID_REQUEST
    retryable = False


class ProviderRejected(ProviderClientError):
    """The provider rejected the request (HTTP 4xx); `message` is the provider's own."""

    def __init__(self, message: str, *, provider: str, status: int) -> None:
        super().__init__(message, provider=provider)
        self.status = status


class InvalidRequest(ProviderClientError):
    """The adapter refused the request before sending it; `field` names the culprit."""

    def __init__(self, message: str, *, provider: str, field: str = "") -> None:
        super().__init__(message, provider=provider)
        self.field = field


class ProviderUpstreamError(ProviderError):
    """The provider, or our configuration of it, is at fault."""

    code = events_pb2.ERROR_CODE_UPSTREAM_ERROR
    retryable = True


class ProviderUnavailable(ProviderUpstreamError):
    """The provider failed or could not be reached; `status` is its HTTP status, if any."""

    code = events_pb2.ERROR_CODE_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool = True,
        status: int | None = None,
    ) -> None:
        super().__init__(message, provider=provider, retryable=retryable)
        self.status = status


class ProviderTimeout(ProviderUpstreamError):
    """The provider did not answer in time (connect, read or total timeout)."""

    code = events_pb2.ERROR_CODE_UPSTREAM_ERROR


class RateLimited(ProviderUpstreamError):
    """The provider is rate limiting (HTTP 429); `retry_after` is its hint in seconds."""

    code = events_pb2.ERROR_CODE_RATE_LIMITED

    def __init__(self, message: str, *, provider: str, retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


#: Statuses that say "try again" although they are 4xx (as the official SDKs retry them).
_RETRYABLE_CLIENT_STATUSES: Final = frozenset({408, 409})
#: Statuses that say the gateway's key was refused.
_CREDENTIAL_STATUSES: Final = frozenset({401, 403})


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
    credentials_rejected: bool = False,
) -> ProviderError:
    """The mesh error for a provider's HTTP error answer.

    `message` is the provider's own message (kept for client errors). `credentials_rejected`
    lets an adapter report a refused key that the provider signals with another status
    (Gemini answers 400 API_KEY_INVALID).
    """
    if credentials_rejected or status in _CREDENTIAL_STATUSES:
        return ProviderUnavailable(
            f"{provider} refused the gateway's credentials (HTTP {status}); "
            "check the routing file's api_key_env",
            provider=provider,
            retryable=False,
            status=status,
        )
    if status == 429:
        return RateLimited(message, provider=provider, retry_after=retry_after)
    if status in _RETRYABLE_CLIENT_STATUSES:
        if status == 408:
            return ProviderTimeout(message, provider=provider)
        return ProviderUnavailable(message, provider=provider, status=status)
    if status == 404:
        # The configured upstream_model or base_url is wrong: the request is not at fault.
        return ProviderUnavailable(
            f"{provider} does not know the configured model or endpoint (HTTP {status}): {message}",
            provider=provider,
            retryable=False,
            status=status,
        )
    if 400 <= status < 500:
        return ProviderRejected(message, provider=provider, status=status)
    return ProviderUnavailable(message, provider=provider, status=status)


def error_for_code(
    code: events_pb2.ErrorCode,
    message: str,
    *,
    provider: str,
    retryable: bool,
    status: int = 400,
) -> ProviderError:
    """The mesh error for a provider's error object that came before the stream started (an
    error event, or an error document in a 200 answer).

    `code` and `retryable` are the adapter's reading of the object; a rejected request is
    reported with `status` (the HTTP status the object names, when it names one).
    """
    if code == events_pb2.ERROR_CODE_RATE_LIMITED:
        return RateLimited(message, provider=provider)
    if code == events_pb2.ERROR_CODE_INVALID_REQUEST:
        return ProviderRejected(message, provider=provider, status=status)
    return ProviderUnavailable(message, provider=provider, retryable=retryable)
