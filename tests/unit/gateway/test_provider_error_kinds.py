"""The kind under which a provider's in-band failure is counted: the adapter error class the
same failure raises before the stream started."""

from __future__ import annotations

import pytest
from llmmesh.v1 import events_pb2

from gateway.metrics import GatewayMetrics


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (events_pb2.ERROR_CODE_RATE_LIMITED, "RateLimited"),
        (events_pb2.ERROR_CODE_INVALID_REQUEST, "ProviderRejected"),
        (events_pb2.ERROR_CODE_IDLE_TIMEOUT, "ProviderTimeout"),
        (events_pb2.ERROR_CODE_TOTAL_TIMEOUT, "ProviderTimeout"),
        (events_pb2.ERROR_CODE_UNAVAILABLE, "ProviderUnavailable"),
        (events_pb2.ERROR_CODE_UPSTREAM_ERROR, "ProviderUnavailable"),
    ],
)
def test_an_in_band_failure_is_counted_under_its_pre_start_kind(
    code: events_pb2.ErrorCode, kind: str
) -> None:
    metrics = GatewayMetrics()
    metrics.count_provider_stream_error("anthropic", events_pb2.StreamError(code=code))
    samples = {
        (sample.labels["provider"], sample.labels["kind"]): sample.value
        for family in metrics.registry.collect()
        if family.name == "llm_mesh_gateway_provider_errors"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert samples == {("anthropic", kind): 1}
