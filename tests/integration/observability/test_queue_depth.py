"""Queue depth and consumers on the scheduler's /metrics, as the broker itself counts them.

Two sources (scheduler/queue_monitor.py): a passive declare on the machine's broker (ready
messages and consumers), and the management API of a private node with the plugin, which
also counts the tasks delivered to a worker and not yet acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from management_broker import ManagementBroker
from observability_mesh import Mesh, chat, collect, scrape, wait_until

from scheduler.server import SchedulerServer

pytestmark = pytest.mark.skipif(
    not ManagementBroker.available(), reason="RabbitMQ is not installed"
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def management_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ManagementBroker]:
    """The module's private node with the management plugin (~5 s to boot)."""
    broker = ManagementBroker(tmp_path_factory.mktemp("management-broker"))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


@pytest_asyncio.fixture(loop_scope="session")
async def managed_mesh(
    management_broker: ManagementBroker, prefix: str, tmp_path: Path
) -> AsyncIterator[Mesh]:
    """A test's own mesh on the private node, its schedulers reading the management API."""
    mesh = Mesh(prefix, tmp_path, amqp_url=management_broker.amqp_url)
    try:
        yield mesh
    finally:
        await mesh.aclose()


def _series(model: str) -> tuple[str, str, str]:
    """The names of the ready, unacknowledged and consumers samples of `model`."""
    labels = f'{{model="{model}"}}'
    return (
        f"llm_mesh_scheduler_queue_messages{labels}",
        f"llm_mesh_scheduler_queue_messages_unacknowledged{labels}",
        f"llm_mesh_scheduler_queue_consumers{labels}",
    )


async def _reads(port: int, expected: dict[str, float | None]) -> bool:
    """Whether every sample has its expected value (None: the sample is absent)."""
    samples = await scrape(port)
    return all(samples.get(name) == value for name, value in expected.items())


async def test_a_paused_worker_queue_reads_5_then_0_by_passive_declare(mesh: Mesh) -> None:
    """The issue's test, on the machine's broker (no management plugin)."""
    # Still "discovering": the replica publishes although no worker announced the model.
    scheduler = await mesh.start_scheduler(discovery_period=300)
    await _reads_5_then_0(mesh, scheduler, "obs-depth-declare", managed=False)


async def test_a_paused_worker_queue_reads_5_then_0_by_management_api(
    managed_mesh: Mesh, management_broker: ManagementBroker
) -> None:
    """The issue's test, through the management API."""
    scheduler = await managed_mesh.start_scheduler(
        discovery_period=300, broker_management_url=management_broker.management_url
    )
    await _reads_5_then_0(managed_mesh, scheduler, "obs-depth-management", managed=True)


async def _reads_5_then_0(
    mesh: Mesh, scheduler: SchedulerServer, model: str, *, managed: bool
) -> None:
    """No worker consumes and 5 tasks are published: the depth reads 5; a worker starts and
    serves them: it reads 0. A passive declare cannot tell unacknowledged messages: that
    series stays absent then."""
    await mesh.declare_model_queue(model)  # as a worker that has since stopped would have
    client = mesh.client(scheduler)
    ready, unacknowledged, consumers = _series(model)
    requests = [
        asyncio.create_task(collect(client.generate(chat(model, f"queued {number}"))))
        for number in range(5)
    ]
    none = 0 if managed else None
    await wait_until(
        lambda: _reads(scheduler.http_port, {ready: 5, unacknowledged: none, consumers: 0})
    )
    await mesh.start_worker(model, scheduler)
    async with asyncio.timeout(15):
        streams = await asyncio.gather(*requests)
    assert all(events[-1].HasField("generation_finish") for events in streams)
    await wait_until(
        lambda: _reads(scheduler.http_port, {ready: 0, unacknowledged: none, consumers: 1})
    )


async def test_unacknowledged_tasks_are_counted_apart_from_ready_ones(
    managed_mesh: Mesh, management_broker: ManagementBroker
) -> None:
    """A worker running 2 tasks at once (its prefetch) holds 2 unacknowledged while 2 more
    wait; once all are served, both read 0."""
    model = "obs-unacked"
    scheduler = await managed_mesh.start_scheduler(
        broker_management_url=management_broker.management_url
    )
    # Each task runs 3 s: time enough to read the figures while the first two run.
    await managed_mesh.start_worker(
        model, scheduler, capacity=2, synthetic_tokens=15, synthetic_token_interval=0.2
    )
    client = managed_mesh.client(scheduler)
    ready, unacknowledged, consumers = _series(model)
    requests = [
        asyncio.create_task(collect(client.generate(chat(model, f"held {number}"))))
        for number in range(4)
    ]
    await wait_until(
        lambda: _reads(scheduler.http_port, {ready: 2, unacknowledged: 2, consumers: 1})
    )
    async with asyncio.timeout(30):
        streams = await asyncio.gather(*requests)
    assert all(events[-1].HasField("generation_finish") for events in streams)
    await wait_until(
        lambda: _reads(scheduler.http_port, {ready: 0, unacknowledged: 0, consumers: 1})
    )
