"""Schema-based fuzzing of every route in `/openapi.json` (schemathesis): no 5xx, no hang.

Bounded: a fixed number of examples per operation, every call with a timeout, the synthetic
worker's context keeps every generation short.
"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from gateway_mesh import MODEL, Gateway
from hypothesis import HealthCheck, settings
from schemathesis.generation.case import Case

from gateway.openapi import openapi_document

#: Bound of one call: no request may hang.
CALL_TIMEOUT = 30.0


# The document `/openapi.json` serves (built from the code, so known at collection time;
# `schemathesis.pytest.from_fixture` does not work with pytest 9).
schema = schemathesis.openapi.from_dict(openapi_document())


def test_the_served_document_is_the_fuzzed_one(gateway: Gateway) -> None:
    served = httpx.get(f"{gateway.url}/openapi.json", timeout=CALL_TIMEOUT).json()
    assert served == openapi_document()


def _asked_for_a_deadline(case: Case[Any]) -> bool:
    # A native request may set its own `timeout` budget; a tiny one legitimately ends in 504.
    return isinstance(case.body, dict) and "timeout" in case.body


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors(case: Case[Any], gateway: Gateway, api_key: str) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = (
            MODEL  # past the 404 (tested elsewhere), into validation and generation
        )
    response = case.call(
        base_url=gateway.url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=CALL_TIMEOUT,
    )
    if response.status_code == 504 and _asked_for_a_deadline(case):
        return
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
