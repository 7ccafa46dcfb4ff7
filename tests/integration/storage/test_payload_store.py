"""PayloadStore against a real SeaweedFS: round trips, corruption, storage down or hung."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
import pytest_asyncio
from llmmesh.v1 import broker_pb2
from minio import Minio
from pydantic import SecretStr

from plumbing.object_store import PayloadStore
from plumbing.s3_client import S3Timeouts, connect_s3
from plumbing.settings import MeshSettings
from plumbing.storage_errors import ObjectMissing, PayloadCorrupt, StorageUnavailable

#: Unreachable or hung storage must fail within this many seconds with the test's timeouts.
FAIL_FAST_SECONDS = 3.0


@pytest.fixture
def store(s3_client: Minio, bucket: str) -> PayloadStore:
    return PayloadStore(s3_client, bucket)


@pytest.mark.parametrize("size", [0, 300, 5 * 1024 * 1024, 20 * 1024 * 1024 + 7])
async def test_round_trip(store: PayloadStore, s3_client: Minio, size: int) -> None:
    data = os.urandom(size)

    reference = await store.put(data)

    assert reference.bucket == store.bucket
    assert reference.size == size
    assert await store.get(reference) == data
    await store.delete(reference)
    with pytest.raises(ObjectMissing):
        await store.get(reference)
    await store.delete(reference)  # deleting twice is fine


async def test_reference_survives_the_broker_encoding(store: PayloadStore) -> None:
    reference = await store.put(b"x" * 1000, key="request-123")
    task = broker_pb2.Task(request_id="request-123", payload_reference=reference)

    decoded = broker_pb2.Task.FromString(task.SerializeToString())

    assert decoded.WhichOneof("body") == "payload_reference"
    assert decoded.payload_reference.key == "request-123"
    assert await store.get(decoded.payload_reference) == b"x" * 1000


@pytest.mark.parametrize("replacement", [b"B" * 4096, b"A" * 4095, b"A" * 4097])
async def test_corruption_is_detected(
    store: PayloadStore, s3_client: Minio, replacement: bytes
) -> None:
    reference = await store.put(b"A" * 4096)
    # Overwrite the object behind the store's back.
    await asyncio.to_thread(
        s3_client.put_object,
        reference.bucket,
        reference.key,
        io.BytesIO(replacement),
        len(replacement),
    )

    with pytest.raises(PayloadCorrupt) as caught:
        await store.get(reference)

    assert not caught.value.retryable


async def test_sweep_deletes_only_old_payloads(store: PayloadStore) -> None:
    references = [await store.put(os.urandom(100)) for _ in range(3)]

    assert await store.sweep(older_than=timedelta(hours=1)) == 0
    assert [len(await store.get(reference)) for reference in references] == [100, 100, 100]
    # S3 dates have one-second resolution: "older than -2 s" covers objects written just now.
    assert await store.sweep(older_than=timedelta(seconds=-2)) == 3
    for reference in references:
        with pytest.raises(ObjectMissing):
            await store.get(reference)


async def test_sweep_of_a_missing_bucket_is_a_no_op(s3_client: Minio, bucket: str) -> None:
    assert await PayloadStore(s3_client, bucket).sweep(older_than=timedelta(0)) == 0


def _unreachable_store(port: int) -> PayloadStore:
    settings = MeshSettings(
        s3_endpoint=f"127.0.0.1:{port}", s3_access_key="key", s3_secret_key=SecretStr("secret")
    )
    return PayloadStore(connect_s3(settings, S3Timeouts(connect=0.5, read=0.5, retries=1)))


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest_asyncio.fixture
async def hung_port() -> AsyncIterator[int]:
    """A server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])
        for writer in held:
            writer.close()
            await writer.wait_closed()


async def test_storage_down_fails_fast(closed_port: int) -> None:
    store = _unreachable_store(closed_port)
    reference = broker_pb2.PayloadReference(bucket="payloads", key="k", size=1, sha256="0" * 64)

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put(b"data"),
        lambda: store.get(reference),
        lambda: store.delete(reference),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as caught:
            await call()
        assert time.monotonic() - started < FAIL_FAST_SECONDS
        assert caught.value.retryable


async def test_hung_storage_times_out(hung_port: int) -> None:
    store = _unreachable_store(hung_port)
    reference = broker_pb2.PayloadReference(bucket="payloads", key="k", size=1, sha256="0" * 64)

    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await store.get(reference)

    assert time.monotonic() - started < FAIL_FAST_SECONDS
