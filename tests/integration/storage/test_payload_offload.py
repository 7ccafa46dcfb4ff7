"""Large requests by reference through object storage, on the real request path.

Real SeaweedFS (the session's), real RabbitMQ, in-process schedulers and synthetic worker
subprocesses. The threshold is 4 KiB: a prompt of a few thousand words goes to the payload
bucket, the broker carries only the reference, the worker fetches and verifies it, and the
object is gone when the request ends. Corruption, storage down (refused or hung) and storage
not configured end in clean statuses; long outputs are split into chunks under the limit.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from io import BytesIO
from typing import Any

import aio_pika
import grpc
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractQueue
from broker_inspector import AMQP_URL, BrokerInspector
from google.rpc import error_details_pb2, status_pb2
from llmmesh.v1 import broker_pb2, events_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from minio import Minio
from pydantic import SecretStr
from request_path_harness import START_TIMEOUT, Mesh, chat, kinds, status_details

from bench.process_mesh import ServiceProcess, wait_until
from plumbing.object_store import PayloadStore
from plumbing.s3_server import S3Server
from plumbing.settings import MeshSettings
from scheduler.server import SchedulerServer

MODEL = "offload"
THRESHOLD = 4096
#: Environment of workers that reach the session's storage with the test's chunk limit.
LIMITS = {
    "LLM_MESH_WORKER_PAYLOAD_THRESHOLD_BYTES": str(THRESHOLD),
    # The long-output test asks for 64 sequences at once (the scheduler allows it too).
    "LLM_MESH_WORKER_MAX_N": "64",
}
#: Synthetic workers here take multi-MiB prompts.
SYNTHETIC: dict[str, Any] = {"max_context": 10_000_000, "token_interval": 0.001}
WAIT = 20.0


def _long_prompt(words: int) -> str:
    return " ".join(f"word{number}" for number in range(words))


@pytest.fixture(scope="module")
def payload_bucket() -> str:
    return f"payloads-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scheduler(mesh: Mesh, s3_server: S3Server, payload_bucket: str) -> SchedulerServer:
    return await mesh.start_scheduler(
        mesh=s3_server.mesh_settings(),
        payload_threshold_bytes=THRESHOLD,
        payload_bucket=payload_bucket,
        max_request_bytes=32 * 1024 * 1024,
        queue_timeout=20,
        max_n=64,  # the long-output test asks for 64 sequences at once
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(mesh: Mesh, scheduler: SchedulerServer, s3_server: S3Server) -> ServiceProcess:
    return await mesh.start_worker(
        MODEL, scheduler=scheduler, env={**s3_server.environment(), **LIMITS}, **SYNTHETIC
    )


@pytest_asyncio.fixture(loop_scope="session")
async def task_copies(
    broker: BrokerInspector, scheduler: SchedulerServer
) -> AsyncIterator[AbstractQueue]:
    """A queue bound to the tasks exchange with the model's routing key: a copy of each task."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{broker.prefix}test.copies.{uuid.uuid4().hex[:8]}")
        await queue.bind(scheduler.broker.topology.tasks_exchange, routing_key=MODEL)
        yield queue
        await queue.delete(if_unused=False, if_empty=False)


async def _collect(events: AsyncGenerator[events_pb2.StreamEvent, None]) -> list[Any]:
    async with asyncio.timeout(WAIT):
        return [event async for event in events]


async def _status(events: AsyncGenerator[events_pb2.StreamEvent, None]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _collect(events)
    return raised.value


async def _copied_task(queue: AbstractQueue) -> tuple[int, broker_pb2.Task]:
    """The size and content of the next task copied to `queue`."""
    async with asyncio.timeout(WAIT):
        message = await queue.get(timeout=WAIT)
    await message.ack()
    return len(message.body), broker_pb2.Task.FromString(message.body)


async def _stored(client: Minio, bucket: str) -> list[str]:
    """The object names in `bucket` (none if it does not exist)."""

    def names() -> list[str]:
        if not client.bucket_exists(bucket):
            return []
        return [str(item.object_name) for item in client.list_objects(bucket, recursive=True)]

    return await asyncio.to_thread(names)


async def _knows(scheduler: SchedulerServer, worker: ServiceProcess) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        await scheduler.registry.wait_for(
            lambda registry: any(
                beat.worker_id == worker.fields["worker_id"] and beat.ready
                for beat in registry.workers()
            )
        )


def _reasons(status: status_pb2.Status) -> tuple[str, bool]:
    """The ErrorInfo reason and whether RetryInfo is present."""
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    retry = any(detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for detail in status.details)
    return info.reason, retry


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _storage_at(port: int) -> MeshSettings:
    return MeshSettings(
        s3_endpoint=f"127.0.0.1:{port}",
        s3_access_key="nobody",
        s3_secret_key=SecretStr("nothing"),
        s3_secure=False,
    )


async def test_a_long_prompt_goes_by_reference_and_the_task_message_stays_small(
    mesh: Mesh,
    scheduler: SchedulerServer,
    worker: ServiceProcess,
    task_copies: AbstractQueue,
    s3_client: Minio,
    payload_bucket: str,
) -> None:
    client = mesh.client(scheduler)
    request = chat(_long_prompt(3000), model=MODEL, max_tokens=4)
    assert request.ByteSize() > 5 * THRESHOLD

    events = await _collect(client.generate(request))

    assert kinds(events)[0] == "generation_start" and "error" not in kinds(events)
    assert events[0].generation_start.prompt_tokens == 3000
    assert events[-1].generation_finish.usage.completion_tokens == 4
    size, task = await _copied_task(task_copies)
    assert task.WhichOneof("body") == "payload_reference"
    assert size < 512
    reference = task.payload_reference
    assert (reference.bucket, reference.key) == (payload_bucket, task.request_id)
    assert reference.size == request.ByteSize() and len(reference.sha256) == 64
    assert await _stored(s3_client, payload_bucket) == []
    stored = scheduler.metrics.registry.get_sample_value("llm_mesh_scheduler_payloads_stored_total")
    assert stored is not None and stored >= 1

    # A small request still travels inline.
    small = await _collect(client.generate(chat("hello", model=MODEL, max_tokens=2)))
    assert kinds(small)[-1] == "generation_finish"
    _, inline = await _copied_task(task_copies)
    assert inline.WhichOneof("body") == "request"


async def test_a_multi_mib_prompt_round_trips_through_storage(
    mesh: Mesh,
    scheduler: SchedulerServer,
    worker: ServiceProcess,
    task_copies: AbstractQueue,
    s3_client: Minio,
    payload_bucket: str,
) -> None:
    words = 1_200_000
    request = chat("mesh " * words, model=MODEL, max_tokens=3)
    assert request.ByteSize() > 5 * 1024 * 1024  # Over gRPC's default 4 MiB, too.

    events = await _collect(mesh.client(scheduler).generate(request))

    assert kinds(events)[-1] == "generation_finish" and "error" not in kinds(events)
    assert events[0].generation_start.prompt_tokens == words
    assert events[-1].generation_finish.usage.prompt_tokens == words
    size, task = await _copied_task(task_copies)
    assert task.payload_reference.size == request.ByteSize() and size < 512
    assert await _stored(s3_client, payload_bucket) == []


async def test_a_long_output_goes_out_in_chunks_under_the_limit(
    scheduler: SchedulerServer, worker: ServiceProcess
) -> None:
    sequences, tokens = 64, 200
    request = chat(model=MODEL, n=sequences, max_tokens=tokens, ignore_eos=True)
    responses: list[scheduler_service_pb2.GenerateResponse] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.port}") as channel:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Generate(scheduler_service_pb2.GenerateRequest(request=request))
        async with asyncio.timeout(WAIT):
            # The scheduler writes each chunk it receives as one response.
            responses = [response async for response in call]
    events = [event for response in responses for event in response.events]
    assert "error" not in kinds(events)
    streamed = sum(len(e.sequence_delta.token_ids) for e in events if e.HasField("sequence_delta"))
    assert streamed == events[-1].generation_finish.usage.completion_tokens == sequences * tokens
    sizes = [response.ByteSize() for response in responses]
    assert max(sizes) <= THRESHOLD
    assert sum(sizes) > 5 * THRESHOLD  # So several chunks had to be cut.


async def test_the_stored_body_is_deleted_when_the_caller_cancels(
    mesh: Mesh,
    scheduler: SchedulerServer,
    worker: ServiceProcess,
    s3_client: Minio,
    payload_bucket: str,
) -> None:
    request = chat(_long_prompt(2000), model=MODEL, max_tokens=100_000, ignore_eos=True)
    events = mesh.client(scheduler).generate(request)
    async with asyncio.timeout(WAIT):
        while not (await anext(events)).HasField("sequence_delta"):
            pass
    assert len(await _stored(s3_client, payload_bucket)) == 1  # Kept while it runs.
    await events.aclose()
    await wait_until(lambda: _empty(s3_client, payload_bucket))
    await worker.wait_metric("llm_mesh_worker_running_tasks", lambda value: value == 0)


async def _empty(client: Minio, bucket: str) -> bool:
    return await _stored(client, bucket) == []


async def test_a_corrupted_body_is_a_non_retryable_data_loss(
    mesh: Mesh, broker: BrokerInspector, s3_server: S3Server, s3_client: Minio
) -> None:
    model, bucket = "offload-corrupt", f"payloads-{uuid.uuid4().hex[:12]}"
    # Still "discovering" workers: the task is queued although no worker serves the model yet.
    held = await mesh.start_scheduler(
        mesh=s3_server.mesh_settings(),
        payload_threshold_bytes=THRESHOLD,
        payload_bucket=bucket,
        discovery_period=600,
        queue_timeout=30,
    )
    await broker.declare_model_queue(model)
    call = asyncio.create_task(
        _status(mesh.client(held).generate(chat(_long_prompt(3000), model=model)))
    )
    await wait_until(lambda: _nonempty(s3_client, bucket))
    (key,) = await _stored(s3_client, bucket)
    await asyncio.to_thread(_flip_a_byte, s3_client, bucket, key)

    await mesh.start_worker(model, scheduler=held, env={**s3_server.environment()}, **SYNTHETIC)
    async with asyncio.timeout(WAIT):
        error = await call

    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert "integrity" in str(error.details())
    assert _reasons(status_details(error)) == ("INTERNAL", False)
    assert await _stored(s3_client, bucket) == []


async def _nonempty(client: Minio, bucket: str) -> bool:
    return bool(await _stored(client, bucket))


def _flip_a_byte(client: Minio, bucket: str, key: str) -> None:
    """Overwrites the object with bytes of the same size that differ in one place."""
    response = client.get_object(bucket, key)
    try:
        data = bytearray(response.read())
    finally:
        response.close()
        response.release_conn()
    data[len(data) // 2] ^= 0xFF
    client.put_object(bucket, key, BytesIO(bytes(data)), len(data))


async def test_storage_refusing_connections_is_a_fast_retryable_unavailable(
    mesh: Mesh, worker: ServiceProcess
) -> None:
    cut_off = await mesh.start_scheduler(
        mesh=_storage_at(_closed_port()), payload_threshold_bytes=THRESHOLD
    )
    await _knows(cut_off, worker)
    client = mesh.client(cut_off)
    started = time.monotonic()

    error = await _status(client.generate(chat(_long_prompt(3000), model=MODEL)))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert _reasons(status_details(error)) == ("UNAVAILABLE", True)
    assert time.monotonic() - started < 5
    # Small requests need no storage.
    events = await _collect(client.generate(chat("hello", model=MODEL, max_tokens=2)))
    assert kinds(events)[-1] == "generation_finish" and "error" not in kinds(events)


async def test_storage_that_hangs_is_unavailable_within_the_queue_limit(
    mesh: Mesh, worker: ServiceProcess
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # Accept, read nothing, answer nothing.

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        stuck = await mesh.start_scheduler(
            mesh=_storage_at(port), payload_threshold_bytes=THRESHOLD, queue_timeout=2
        )
        await _knows(stuck, worker)
        started = time.monotonic()
        error = await _status(mesh.client(stuck).generate(chat(_long_prompt(3000), model=MODEL)))
        elapsed = time.monotonic() - started
    finally:
        silent.close()
        for writer in accepted:
            writer.close()
        await silent.wait_closed()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert _reasons(status_details(error))[1]
    assert 1.5 < elapsed < 5


async def test_a_worker_that_cannot_reach_storage_answers_retryable_unavailable(
    mesh: Mesh, scheduler: SchedulerServer, s3_client: Minio, payload_bucket: str
) -> None:
    model = "offload-blind"
    blind = _storage_at(_closed_port())
    assert blind.s3_endpoint
    await mesh.start_worker(
        model,
        scheduler=scheduler,
        env={
            "LLM_MESH_S3_ENDPOINT": blind.s3_endpoint,
            "LLM_MESH_S3_ACCESS_KEY": "nobody",
            "LLM_MESH_S3_SECRET_KEY": "nothing",
        },
        **SYNTHETIC,
    )
    started = time.monotonic()

    error = await _status(mesh.client(scheduler).generate(chat(_long_prompt(3000), model=model)))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "could not be fetched" in str(error.details())
    assert _reasons(status_details(error)) == ("UNAVAILABLE", True)
    assert time.monotonic() - started < 5
    assert await _stored(s3_client, payload_bucket) == []


async def test_without_storage_a_large_request_is_refused_clearly(
    mesh: Mesh, worker: ServiceProcess
) -> None:
    plain = await mesh.start_scheduler(
        mesh=MeshSettings(s3_endpoint=""), payload_threshold_bytes=THRESHOLD
    )
    await _knows(plain, worker)
    client = mesh.client(plain)

    error = await _status(client.generate(chat(_long_prompt(3000), model=MODEL)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no object storage is configured" in str(error.details())
    assert _reasons(status_details(error)) == ("INVALID_REQUEST", False)
    events = await _collect(client.generate(chat("hello", model=MODEL, max_tokens=2)))
    assert kinds(events)[-1] == "generation_finish"


async def test_leftover_payloads_are_swept_after_their_ttl(
    mesh: Mesh, s3_server: S3Server, s3_client: Minio
) -> None:
    bucket = f"payloads-{uuid.uuid4().hex[:12]}"
    await PayloadStore(s3_client, bucket).put(b"a crashed replica's request", key="leftover")
    sweeper = await mesh.start_scheduler(
        mesh=s3_server.mesh_settings(),
        payload_bucket=bucket,
        total_timeout=0.5,
        payload_ttl=1,
        payload_sweep_interval=0.2,
    )
    await wait_until(lambda: _empty(s3_client, bucket))
    swept = sweeper.metrics.registry.get_sample_value("llm_mesh_scheduler_payloads_swept_total")
    assert swept == 1
