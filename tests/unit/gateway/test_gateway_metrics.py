"""The gateway's own metrics: provider failures by provider and kind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from llmmesh.v1 import events_pb2

from gateway.errors import MeshError
from gateway.metrics import GatewayMetrics
from gateway.providers.errors import ProviderTimeout
from gateway.streaming import start_generation


async def _timing_out() -> AsyncIterator[events_pb2.StreamEvent]:
    raise ProviderTimeout("read timeout", provider="openai")
    yield events_pb2.StreamEvent()  # pragma: no cover - makes this a generator


async def test_a_provider_failure_is_counted_by_provider_and_kind() -> None:
    metrics = GatewayMetrics()
    with pytest.raises(MeshError):
        await start_generation(_timing_out(), metrics)
    value = metrics.registry.get_sample_value(
        "llm_mesh_gateway_provider_errors_total", {"provider": "openai", "kind": "ProviderTimeout"}
    )
    assert value == 1
