"""Poison input: tasks no worker can run, and malformed, oversized or out-of-range requests on
the scheduler's gRPC API and the gateway's HTTP API; both protobuf decoders fuzzed.

The mesh (module scope, the machine's broker under a random prefix): a scheduler (requests
up to 64 KiB over gRPC), a gateway (bodies up to 64 KiB), and a fast synthetic worker for
`poison` with a 64-token context (a fuzzed request never runs long).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import grpc
import httpx
import pytest
import pytest_asyncio
from fault_mesh import MACHINE_AMQP_URL, FaultMesh, chat
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmmesh.v1 import broker_pb2, chat_pb2, events_pb2, scheduler_service_pb2

from bench.process_mesh import ServiceProcess, wait_until
from plumbing.topology import DEAD_LETTER_MAX_LENGTH, DEAD_LETTER_TTL_MS

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "poison"
ATTEMPTS_MODEL = "poison-attempts"
MAX_REQUEST_BYTES = 64 * 1024
GENERATE = "/llmmesh.v1.SchedulerService/Generate"
DEAD_LETTERED = "llm_mesh_worker_tasks_dead_lettered_total"
RECEIVED = "llm_mesh_worker_tasks_received_total"
STARTED = "llm_mesh_worker_tasks_started_total"
REJECTED = "llm_mesh_worker_tasks_rejected_total"
RUNNING = "llm_mesh_worker_running_tasks"
#: Every refusal of bad input comes this fast ...
FAST_ANSWER = 1.0
#: ... but a message over gRPC's size limit, which gRPC itself refuses in about 1 s here.
OVERSIZED_ANSWER = 3.0
#: The statuses a request, however mangled, may end with: never UNKNOWN or INTERNAL.
CLEAR_STATUSES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass
class Poison:
    mesh: FaultMesh
    scheduler: ServiceProcess
    worker: ServiceProcess
    gateway: ServiceProcess
    api_key: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def poison(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Poison]:
    mesh = FaultMesh(
        tmp_path_factory.mktemp("poison"), f"test-{uuid.uuid4().hex[:8]}.", [MODEL, ATTEMPTS_MODEL]
    )
    try:
        scheduler = await mesh.start_scheduler(
            LLM_MESH_SCHEDULER_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES)
        )
        worker = await mesh.start_worker(
            MODEL,
            LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL="0.001",
            LLM_MESH_WORKER_SYNTHETIC_MAX_CONTEXT="64",
        )
        await mesh.wait_for_workers(scheduler, MODEL)
        gateway = await mesh.start_gateway(
            [scheduler], LLM_MESH_GATEWAY_MAX_BODY_BYTES=str(MAX_REQUEST_BYTES)
        )
        yield Poison(mesh, scheduler, worker, gateway, mesh.create_key())
    finally:
        await mesh.aclose()


def _identity(message: bytes) -> bytes:
    return message


@dataclass
class _Answer:
    code: grpc.StatusCode
    details: str
    status: status_pb2.Status | None
    seconds: float


async def _generate_raw(poison: Poison, payload: bytes) -> _Answer:
    """Calls Generate with `payload` as the request's bytes, exactly as given."""
    started = time.monotonic()
    async with grpc.aio.insecure_channel(poison.scheduler.grpc_target) as channel:
        generate = channel.unary_stream(
            GENERATE, request_serializer=_identity, response_deserializer=_identity
        )
        call = generate(
            payload,
            metadata=(("authorization", f"Bearer {poison.mesh.service_key}"),),
            timeout=10,
        )
        try:
            async with asyncio.timeout(15):
                async for _ in call:
                    pass
        except grpc.aio.AioRpcError as error:
            details = None
            for key, value in error.trailing_metadata() or ():
                if key == "grpc-status-details-bin" and isinstance(value, bytes):
                    details = status_pb2.Status.FromString(value)
            return _Answer(error.code(), error.details() or "", details, time.monotonic() - started)
    return _Answer(grpc.StatusCode.OK, "", None, time.monotonic() - started)


def _encoded(request: chat_pb2.ChatRequest) -> bytes:
    return scheduler_service_pb2.GenerateRequest(request=request).SerializeToString()


def _bad_request_field(answer: _Answer) -> str | None:
    assert answer.status is not None, answer
    for detail in answer.status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return str(bad_request.field_violations[0].field)
    return None


async def _still_serves(poison: Poison) -> None:
    answer = await _generate_raw(poison, _encoded(chat(model=MODEL, max_tokens=2)))
    assert answer.code == grpc.StatusCode.OK, answer


async def test_malformed_protobuf_gets_invalid_argument(poison: Poison) -> None:
    """Fault: Generate requests whose bytes are not a valid `GenerateRequest`: garbage, a
    truncated message, invalid UTF-8 in a string field. Promise: INVALID_ARGUMENT naming the
    parser's complaint (not gRPC's UNKNOWN), and the scheduler goes on serving.
    Bound: each answer within 1 s."""
    valid = _encoded(chat("ok", model=MODEL, max_tokens=2))
    model_field = b"\x0a\x02\xff\xfe"  # ChatRequest.model = b"\xff\xfe"
    for payload in (
        b"\xff\xff\xff\xff",
        valid[:-3],
        b"\x0a" + bytes([len(model_field)]) + model_field,
        valid.replace(b"ok", b"\xc3\x28"),  # the message text: an invalid 2-byte sequence
    ):
        answer = await _generate_raw(poison, payload)
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer
        assert answer.details.startswith("malformed request:"), answer
        assert answer.seconds < FAST_ANSWER
    await _still_serves(poison)


async def test_oversized_requests_are_refused(poison: Poison) -> None:
    """Fault: a request larger than the scheduler accepts (64 KiB here), and an HTTP body
    larger than the gateway accepts. Promise: RESOURCE_EXHAUSTED from the scheduler, 413
    from the gateway; both keep serving. Bound: within 3 s (gRPC's own refusal takes ~1 s)."""
    huge = _encoded(chat("x " * MAX_REQUEST_BYTES, model=MODEL, max_tokens=2))
    answer = await _generate_raw(poison, huge)
    assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED, answer
    assert answer.seconds < OVERSIZED_ANSWER
    body = {
        "model": MODEL,
        "messages": [{"role": "ROLE_USER", "content": [{"text": "x " * MAX_REQUEST_BYTES}]}],
    }
    response = await _post(poison, json.dumps(body).encode())
    assert response.status_code == 413, response.text
    await _still_serves(poison)


async def test_out_of_range_values_and_unknown_enums_get_clear_errors(poison: Poison) -> None:
    """Fault: requests that decode but ask for what nobody can serve: a huge `n`, a huge or
    negative `max_tokens`, enum numbers the schema does not define (proto3 enums are open),
    a message without a role. Promise: INVALID_ARGUMENT naming the field (google.rpc
    BadRequest) — from the scheduler, or from the worker's rejection for the context — and
    the worker never sees the huge `n` (it would stall its event loop).
    Bound: each answer within 1 s."""
    cases: list[tuple[Callable[[chat_pb2.ChatRequest], None], str]] = [
        (lambda r: r.generation_parameters.__setattr__("n", 1_000_000), "generation_parameters.n"),
        (lambda r: r.generation_parameters.__setattr__("n", 0), "generation_parameters.n"),
        (
            lambda r: r.generation_parameters.__setattr__("max_tokens", 2_000_000_000),
            "generation_parameters.max_tokens",
        ),
        (
            lambda r: r.generation_parameters.__setattr__("max_tokens", -5),
            "generation_parameters.max_tokens",
        ),
        (lambda r: r.__setattr__("priority", 42), "priority"),
        (lambda r: r.messages[0].__setattr__("role", 99), "messages.0.role"),
        (lambda r: r.messages[0].__setattr__("role", 0), "messages.0.role"),
        (
            lambda r: r.tool_choice.__setattr__("mode", 77),
            "tool_choice.mode",
        ),
    ]
    started = await poison.worker.metric(STARTED)
    for mutate, field in cases:
        request = chat(model=MODEL)
        mutate(request)
        answer = await _generate_raw(poison, _encoded(request))
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, (field, answer)
        assert _bad_request_field(answer) == field, (field, answer)
        assert answer.seconds < FAST_ANSWER, (field, answer)
    assert await poison.worker.metric(STARTED) == started
    await _still_serves(poison)


async def _post(poison: Poison, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=poison.gateway.http_url,
        headers={"authorization": f"Bearer {poison.api_key}", "content-type": "application/json"},
    ) as http:
        return await http.post("/v1/generate", content=body, timeout=10)


async def test_the_http_api_answers_bad_input_with_400(poison: Poison) -> None:
    """Fault: HTTP bodies that are not UTF-8, not JSON, or carry a huge `n`, an unknown role
    name or an undefined role number. Promise: 400 with the API's JSON error body, never a
    5xx. Bound: within 1 s each."""
    good = {"model": MODEL, "messages": [{"role": "ROLE_USER", "content": [{"text": "hi"}]}]}
    bodies = [
        b'{"model": "poison", "messages": [{"role": "ROLE_USER", "content": [{"text": "\xff"}]}]}',
        b"{not json",
        json.dumps({**good, "generation_parameters": {"n": 1_000_000}}).encode(),
        json.dumps({**good, "messages": [{"role": "ROLE_BOGUS", "content": []}]}).encode(),
        json.dumps({**good, "messages": [{"role": 99, "content": [{"text": "hi"}]}]}).encode(),
    ]
    for body in bodies:
        started = time.monotonic()
        response = await _post(poison, body)
        assert response.status_code == 400, (body, response.status_code, response.text)
        assert "error" in response.json()
        assert time.monotonic() - started < FAST_ANSWER


async def _publish_task(body: bytes, *, routing_key: str, exchange: str, **properties: Any) -> None:
    connection = await aio_pika.connect(MACHINE_AMQP_URL)
    async with connection:
        channel = await connection.channel()
        tasks = await channel.get_exchange(exchange)
        await tasks.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
            routing_key=routing_key,
        )


async def _dead_letters(mesh: FaultMesh) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The messages in `llm.dead` now (read and put back: nothing is acked)."""
    found = []
    connection = await aio_pika.connect(MACHINE_AMQP_URL)
    async with connection:
        queue = await (await connection.channel()).get_queue(mesh.topology.dead_letter_queue)
        while (message := await queue.get(fail=False)) is not None:
            found.append(message)
    return found


async def test_undecodable_and_invalid_tasks_are_dead_lettered_at_once(poison: Poison) -> None:
    """Fault: tasks on the model's queue that no worker can run: undecodable bytes, a `Task`
    without a request id, one without a `reply_to`. Promise: the worker rejects each without
    requeueing, so it lands in `llm.dead` (x-death naming the task queue) and is never run
    or redelivered. Bound: all three within 2 s."""
    mesh, worker = poison.mesh, poison.worker
    before, started = await worker.metric(DEAD_LETTERED), await worker.metric(STARTED)
    exchange = mesh.topology.tasks_exchange
    valid = broker_pb2.Task(request_id=f"poison-{uuid.uuid4().hex[:6]}", request=chat(model=MODEL))
    await _publish_task(b"\xff not a task", routing_key=MODEL, exchange=exchange, reply_to="x")
    await _publish_task(
        broker_pb2.Task(request=chat(model=MODEL)).SerializeToString(),
        routing_key=MODEL,
        exchange=exchange,
        reply_to="x",
    )
    await _publish_task(valid.SerializeToString(), routing_key=MODEL, exchange=exchange)
    await worker.wait_metric(DEAD_LETTERED, lambda v: v == before + 3, within=2)
    assert await worker.metric(STARTED) == started
    source = mesh.topology.task_queue(MODEL)

    async def dead_lettered() -> bool:
        deaths = [m.headers.get("x-death") for m in await _dead_letters(mesh)]
        return (
            sum(
                isinstance(d, list)
                and any(isinstance(e, dict) and e.get("queue") == source for e in d)
                for d in deaths
            )
            >= 3
        )

    await wait_until(dead_lettered, within=2)
    assert await mesh.queue_depth(MODEL) == 0


async def test_tasks_that_bypass_the_scheduler_meet_the_workers_own_limits(
    poison: Poison,
) -> None:
    """Fault: tasks published straight to the model's queue by someone with broker access,
    so none of the scheduler's checks ran: a huge `n` (1,000,000; the worker's `max_n` is 8
    by default) and a huge `max_tokens` (past the model's 64-token context). Promise: the
    worker answers each with chunk 0 a rejection naming the field (INVALID_REQUEST for `n`,
    CONTEXT_LENGTH_EXCEEDED for `max_tokens`), acks the task (nothing dead-lettered, the
    queue drained) and never starts a generation. Bound: each answer within 1 s."""
    mesh, worker = poison.mesh, poison.worker
    started, rejected = await worker.metric(STARTED), await worker.metric(REJECTED)
    dead_lettered = await worker.metric(DEAD_LETTERED)
    cases = [
        (chat(model=MODEL, n=1_000_000), events_pb2.ERROR_CODE_INVALID_REQUEST, "n"),
        (
            chat(model=MODEL, max_tokens=2_000_000_000),
            events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
            "max_tokens",
        ),
    ]
    connection = await aio_pika.connect(MACHINE_AMQP_URL)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        for request, code, field in cases:
            task = broker_pb2.Task(request_id=f"bypass-{uuid.uuid4().hex[:6]}", request=request)
            sent = time.monotonic()
            await _publish_task(
                task.SerializeToString(),
                routing_key=MODEL,
                exchange=mesh.topology.tasks_exchange,
                reply_to=replies.name,
                correlation_id=task.request_id,
            )
            async with asyncio.timeout(FAST_ANSWER), replies.iterator() as chunks:
                async for message in chunks:
                    await message.ack()
                    chunk = broker_pb2.TaskChunk.FromString(message.body)
                    break
            assert time.monotonic() - sent < FAST_ANSWER
            assert chunk.request_id == task.request_id
            assert chunk.sequence_number == 0 and not chunk.events
            assert chunk.rejection.code == code, chunk
            assert chunk.rejection.field == f"generation_parameters.{field}", chunk
    await worker.wait_metric(REJECTED, lambda v: v == rejected + len(cases), within=2)
    assert await worker.metric(STARTED) == started
    assert await worker.metric(DEAD_LETTERED) == dead_lettered
    assert await mesh.queue_depth(MODEL) == 0


async def test_the_dead_letter_queue_is_bounded_by_a_ttl_and_a_max_length(poison: Poison) -> None:
    """Fault: none (a property of the topology). Promise: `llm.dead` keeps a dead task for a
    TTL (24 h) and at most 10,000 of them (the oldest go first), so poison never grows it
    without bound; every task queue dead-letters into it through `llm.dlx`."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "list_queues",
        "name",
        "arguments",
        "--formatter",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    queues = {
        entry["name"]: {name: value for name, _type, value in entry["arguments"]}
        for entry in json.loads(stdout)
    }
    topology = poison.mesh.topology
    dead = queues[topology.dead_letter_queue]
    assert dead["x-message-ttl"] == DEAD_LETTER_TTL_MS == 24 * 3600 * 1000
    assert dead["x-max-length"] == DEAD_LETTER_MAX_LENGTH == 10_000
    assert queues[topology.task_queue(MODEL)]["x-dead-letter-exchange"] == (
        topology.dead_letter_exchange
    )


#: Mutations of valid requests reach deeper than random bytes: (position, new byte) pairs.
_MUTATIONS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)


def _mutate(seed: bytes, mutations: list[tuple[int, int]]) -> bytes:
    mutated = bytearray(seed)
    for position, value in mutations:
        mutated[position % len(mutated)] = value
    return bytes(mutated)


_GENERATE_SEED = _encoded(
    chat("fuzz me", model=MODEL, max_tokens=3, temperature=0.5, stop=["zz"], seed=7)
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    payload=st.one_of(st.binary(max_size=512), _MUTATIONS.map(lambda m: _mutate(_GENERATE_SEED, m)))
)
async def test_fuzzed_generate_requests_get_clear_answers(poison: Poison, payload: bytes) -> None:
    """Fault: Generate requests made of arbitrary bytes, or of a valid request with bytes
    overwritten (hypothesis, derandomized: the same 150 inputs every run). Promise: each
    call ends with OK or a clear client status (INVALID_ARGUMENT, NOT_FOUND for a mangled
    model name, DEADLINE_EXCEEDED for a mangled time budget) — never UNKNOWN, INTERNAL or a
    hang — and the scheduler keeps serving. Bound: each call ends within 10 s."""
    answer = await _generate_raw(poison, payload)
    assert answer.code in CLEAR_STATUSES, answer


async def test_the_scheduler_and_worker_survived_the_generate_fuzzing(poison: Poison) -> None:
    """Promise (after the fuzzing above): both still serve, and the worker's process lives."""
    assert poison.worker.process.returncode is None
    assert poison.scheduler.process.returncode is None
    await _still_serves(poison)


_TASK_SEED = broker_pb2.Task(
    request_id="fuzz-seed", request=chat("fuzz me", model=MODEL, max_tokens=3)
).SerializeToString()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(body=st.one_of(st.binary(max_size=256), _MUTATIONS.map(lambda m: _mutate(_TASK_SEED, m))))
async def test_fuzzed_tasks_are_dead_lettered_or_answered(poison: Poison, body: bytes) -> None:
    """Fault: tasks made of arbitrary bytes, or of a valid `Task` with bytes overwritten,
    published on the model's queue (with a `reply_to`; hypothesis, derandomized: the same 60
    inputs every run). Promise: the worker handles each one — dead-letters what does not
    decode or has no request id, rejects or runs the rest — and never crashes or hangs.
    Bound: each task is handled (taken and finished) within 5 s."""
    worker = poison.worker
    received = await worker.metric(RECEIVED)
    await _publish_task(
        body,
        routing_key=MODEL,
        exchange=poison.mesh.topology.tasks_exchange,
        reply_to=f"{poison.mesh.prefix}fuzz-replies-nobody",
    )
    await worker.wait_metric(RECEIVED, lambda v: v >= received + 1, within=5)
    await worker.wait_metric(RUNNING, lambda v: v == 0, within=5)
    assert worker.process.returncode is None


async def test_a_task_that_keeps_killing_workers_is_dead_lettered_after_its_attempts(
    poison: Poison,
) -> None:
    """Fault: a task whose every worker dies while holding it (SIGKILL of the process group;
    stood in for by a worker stuck in `prepare`). Classic queues keep no delivery count, so
    the attempt travels in the `x-attempt` header. Promise: each redelivery is republished
    with the attempt raised; past `max_attempts` (2 here) the next worker dead-letters it
    instead of running it. Bound: dead-lettered within 5 s of the last kill."""
    mesh = poison.mesh
    model = ATTEMPTS_MODEL
    first = await mesh.start_worker(
        model, LLM_MESH_WORKER_SYNTHETIC_PREPARE_DELAY="60", LLM_MESH_WORKER_MAX_ATTEMPTS="2"
    )
    connection = await aio_pika.connect(MACHINE_AMQP_URL)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        task = broker_pb2.Task(
            request_id=f"killer-{uuid.uuid4().hex[:6]}", request=chat(model=model)
        )
        await _publish_task(
            task.SerializeToString(),
            routing_key=model,
            exchange=mesh.topology.tasks_exchange,
            reply_to=replies.name,
        )
        await first.wait_metric(RECEIVED, lambda v: v == 1)
        second = await mesh.start_worker(
            model, LLM_MESH_WORKER_SYNTHETIC_PREPARE_DELAY="60", LLM_MESH_WORKER_MAX_ATTEMPTS="2"
        )
        first.kill()
        # The redelivered task is republished as attempt 2, which `second` then holds.
        await second.wait_metric("llm_mesh_worker_tasks_republished_total", lambda v: v == 1)
        await second.wait_metric(RECEIVED, lambda v: v == 2)
        third = await mesh.start_worker(model, LLM_MESH_WORKER_MAX_ATTEMPTS="2")
        second.kill()
        await third.wait_metric(DEAD_LETTERED, lambda v: v == 1, within=5)
        assert await third.metric(STARTED) == 0

    async def dead_lettered_as_attempt_2() -> bool:
        attempts = [
            message.headers.get("x-attempt")
            for message in await _dead_letters(mesh)
            if _request_id(message.body) == task.request_id
        ]
        return attempts == [2]

    await wait_until(dead_lettered_as_attempt_2)
    assert await mesh.queue_depth(model) == 0


def _request_id(body: bytes) -> str | None:
    try:
        return broker_pb2.Task.FromString(body).request_id
    except DecodeError:
        return None
