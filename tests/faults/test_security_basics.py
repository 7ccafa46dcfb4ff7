"""Security basics: keys never leak into logs, metrics or traces; listeners bind loopback by
default; the object storage `llm-mesh up` starts refuses anonymous requests.

The mesh (module scope, the machine's broker under a random prefix): a scheduler that
requires API keys, a synthetic worker and a gateway on its default host, all logging at DEBUG
and exporting every span to their output (`OTEL_TRACES_EXPORTER=console`), so one capture
holds every log line and every span. `exposure` sends traffic with known keys — good, wrong,
forbidden — on every API, reads every `/metrics`, records every listening socket, then stops
the processes (flushing their spans) and keeps what they wrote.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
import pytest_asyncio
from edge_client import native_body, stream_native
from fault_mesh import FaultMesh, chat

from bench.process_mesh import ServiceProcess, wait_until
from gateway.settings import GatewaySettings
from plumbing.client import SchedulerClient
from plumbing.keystore import Keystore
from plumbing.s3_client import connect_s3
from plumbing.s3_server import S3Server
from plumbing.settings import MeshSettings
from scheduler.settings import Settings as SchedulerSettings
from worker.settings import Settings as WorkerSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "guarded"
OTHER = "elsewhere"


@dataclass
class Exposure:
    """What the mesh wrote and served while it handled traffic with known keys."""

    secrets: dict[str, str]
    log_text: str = ""
    metrics_text: dict[str, str] = field(default_factory=dict)
    listening: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


def _secrets_of(name: str, key: str) -> dict[str, str]:
    """The key, and its secret part alone (`lm-<id>.<secret>`): neither may leak."""
    return {name: key, f"{name} secret": key.split(".", 1)[1]}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def exposure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Exposure]:
    mesh = FaultMesh(
        tmp_path_factory.mktemp("security"),
        f"test-{uuid.uuid4().hex[:8]}.",
        [MODEL, OTHER],
        extra_env={"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    debug = ["--log-level", "DEBUG"]
    try:
        scheduler = await mesh.start_scheduler(args=debug)
        worker = await mesh.start_worker(MODEL, args=debug)
        await mesh.wait_for_workers(scheduler, MODEL)
        gateway = await mesh.start_gateway([scheduler], args=debug, default_host=True)
        keystore = Keystore.open(mesh.keystore_url)
        try:
            user, _ = keystore.create_key("leaky")
            limited, _ = keystore.create_key("limited", allowed_models=[OTHER])
        finally:
            keystore.close()
        key_id = user.split(".", 1)[0]
        wrong = f"{key_id}.{'w' * 43}"
        observed = Exposure(
            {
                **_secrets_of("user key", user),
                **_secrets_of("limited key", limited),
                **_secrets_of("wrong secret", wrong),
                **_secrets_of("service key", mesh.service_key),
            }
        )
        await _traffic(mesh, scheduler, gateway, user=user, limited=limited, wrong=wrong)
        for service in (scheduler, worker, gateway):
            async with httpx.AsyncClient() as http:
                response = await http.get(f"{service.http_url}/metrics", timeout=5)
            observed.metrics_text[service.name] = response.text
            observed.listening[service.name] = service.listening()
        await mesh.aclose()  # Stopping flushes the spans still batched.
        observed.log_text = mesh.log_text()
        yield observed
    finally:
        await mesh.aclose()


async def _traffic(
    mesh: FaultMesh,
    scheduler: ServiceProcess,
    gateway: ServiceProcess,
    *,
    user: str,
    limited: str,
    wrong: str,
) -> None:
    status, events = await stream_native(gateway, user, native_body(MODEL, max_tokens=3))
    assert status == 200 and events[-1].event == "generation.finish"
    openai = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    anthropic = {**openai, "max_tokens": 3}
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as http:
        answers = [
            await http.post(
                "/v1/chat/completions", json=openai, headers={"authorization": f"Bearer {user}"}
            ),
            await http.post("/v1/messages", json=anthropic, headers={"x-api-key": user}),
            await http.post(
                "/v1/chat/completions", json=openai, headers={"authorization": f"Bearer {wrong}"}
            ),
            await http.post("/v1/messages", json=anthropic, headers={"x-api-key": wrong}),
            await http.post(
                "/v1/chat/completions",
                json=openai,
                headers={"authorization": f"Bearer {limited}"},
            ),
            await http.get("/v1/models", headers={"authorization": f"Bearer {user}"}),
            await http.get("/v1/models", headers={"authorization": f"Bearer {wrong}"}),
        ]
    assert [answer.status_code for answer in answers] == [200, 200, 401, 401, 403, 200, 401]
    for key, expected in ((user, grpc.StatusCode.OK), (wrong, grpc.StatusCode.UNAUTHENTICATED)):
        async with SchedulerClient(scheduler.grpc_target, api_key=key) as client:
            try:
                async for _ in client.generate(chat(model=MODEL, max_tokens=2), timeout=10):
                    pass
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
        assert code == expected


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, secret in secrets.items() if secret in text]


async def test_keys_never_appear_in_logs_or_traces(exposure: Exposure) -> None:
    """Fault: requests carrying valid, wrong-secret and forbidden API keys on every API
    (native, OpenAI, Anthropic headers, the scheduler's gRPC metadata), with every service
    logging at DEBUG and exporting its spans to its output. Promise: no key — nor its
    secret part — appears in any log line or span of the gateway, scheduler or worker (a
    key's id may: it names the key without granting anything)."""
    assert '"trace_id"' in exposure.log_text, "no span was exported: the grep proves nothing"
    assert _leaks(exposure.log_text, exposure.secrets) == []


async def test_keys_never_appear_in_metrics(exposure: Exposure) -> None:
    """Fault: as above. Promise: no key or secret appears in any `/metrics` sample or label
    of the gateway, scheduler or worker."""
    assert set(exposure.metrics_text) == {"scheduler-0", "worker-guarded-1", "gateway-2"}
    for name, text in exposure.metrics_text.items():
        assert _leaks(text, exposure.secrets) == [], name


def _loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped  # gRPC listens on 127.0.0.1 through a dual-stack socket.
    return parsed.is_loopback


async def test_every_listener_binds_loopback_by_default(exposure: Exposure) -> None:
    """Fault: none (the defaults). Promise: every listen address a service uses unless told
    otherwise is loopback — the gateway's host, the scheduler's gRPC and probe binds, the
    worker's probe bind, the broker URL — and every socket a running gateway (on its default
    host), scheduler and worker listens on is a loopback one."""
    defaults = {
        "gateway host": GatewaySettings.model_fields["host"].default,
        "scheduler grpc_bind": SchedulerSettings.model_fields["grpc_bind"].default,
        "scheduler http_bind": SchedulerSettings.model_fields["http_bind"].default,
        "worker http_bind": WorkerSettings.model_fields["http_bind"].default,
        "broker": MeshSettings.model_fields["amqp_url"].default.split("@", 1)[1],
    }
    for name, address in defaults.items():
        host = address.rsplit(":", 1)[0] if ":" in address else address
        assert _loopback(host), (name, address)
    for name, sockets in exposure.listening.items():
        assert sockets, name
        assert all(_loopback(address) for address, _ in sockets), (name, sockets)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def object_storage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    """The SeaweedFS server `llm-mesh up` starts (`plumbing.s3_server.S3Server`)."""
    data: Path = tmp_path_factory.mktemp("s3")
    async with S3Server(data) as server:
        yield server


async def test_object_storage_refuses_anonymous_requests(object_storage: S3Server) -> None:
    """Fault: S3 requests without credentials against the storage `llm-mesh up` starts.
    Promise: every one is refused with 403 (listing, creating a bucket, writing or reading an
    object), while signed requests with the generated credentials work; and every socket its
    `weed` process listens on is a loopback one."""
    client = connect_s3(object_storage.mesh_settings(MeshSettings()))
    bucket = f"private-{uuid.uuid4().hex[:6]}"
    client.make_bucket(bucket)
    client.put_object(bucket, "object", io.BytesIO(b"secret"), 6)
    base = f"http://{object_storage.endpoint}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        anonymous = [
            await http.get("/"),
            await http.put(f"/anonymous-{uuid.uuid4().hex[:6]}"),
            await http.put(f"/{bucket}/planted", content=b"x"),
            await http.get(f"/{bucket}/object"),
            await http.get(f"/{bucket}"),
        ]
    assert [response.status_code for response in anonymous] == [403] * 5
    assert client.get_object(bucket, "object").read() == b"secret"
    assert object_storage.pid is not None
    sockets = _listening(object_storage.pid)
    assert sockets and all(_loopback(address) for address, _ in sockets), sockets


#: Every component of `weed mini` listens on an HTTP port and a gRPC port (S3's included).
_WEED_COMPONENTS = 5


def _listening(group: int) -> set[tuple[str, int]]:
    """The (address, port) of every socket the process group listens on."""
    return {
        (connection.laddr.ip, connection.laddr.port)
        for process in psutil.process_iter()
        if _in_group(process, group)
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }


def _listening_ports(group: int) -> set[int]:
    return {port for _, port in _listening(group)}


async def _refuses_tls_without_a_client_certificate(port: int) -> bool:
    """Whether a TLS client that presents no certificate gets no HTTP/2 frame from `port`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # The server's certificate is not the question here.
    context.set_alpn_protocols(["h2"])
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        writer.write(_HTTP2_PREFACE)
        async with asyncio.timeout(5):
            # TLS 1.3: the server's refusal (alert 116, certificate required) follows the
            # handshake; a server that accepted would answer the preface with SETTINGS.
            answer = await reader.read(64)
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        writer.close()
    return answer == b""


#: HTTP/2's connection preface and an empty SETTINGS frame (RFC 9113, section 3.4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


async def _plaintext_grpc_code(port: int) -> grpc.StatusCode:
    """The status of a plaintext gRPC call of a real SeaweedFS method on `port`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/master_pb.Seaweed/GetMasterConfiguration",
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        try:
            await call(b"", timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _identity(message: bytes) -> bytes:
    return message


async def test_object_storage_internal_ports_refuse_anonymous_requests(
    object_storage: S3Server,
) -> None:
    """Fault: requests without credentials to every other port of the storage's `weed`
    process (master, volume server, filer, admin): plain HTTP reads and writes of their APIs
    (a path read or write, an upload through the master, a file id assignment, a collection —
    the bucket's data — dropped, volumes grown), and gRPC without a client certificate.
    Promise: no way around the S3 credentials for a local process — every HTTP request is
    refused (4xx) and reads nothing, the bucket keeps exactly what S3 wrote; every gRPC port
    refuses a plaintext call and a TLS client that presents no certificate."""
    client = connect_s3(object_storage.mesh_settings(MeshSettings()))
    bucket = f"private-{uuid.uuid4().hex[:6]}"
    client.make_bucket(bucket)
    client.put_object(bucket, "object", io.BytesIO(b"secret"), 6)
    group = object_storage.pid
    assert group is not None
    # The admin component comes up last, after S3 answers: wait for every listener.
    await wait_until(lambda: len(_listening_ports(group)) == 2 * _WEED_COMPONENTS, within=15)
    s3_port = int(object_storage.endpoint.rsplit(":", 1)[1])
    http_ports, grpc_ports = [], []
    async with httpx.AsyncClient(timeout=5) as http:
        for port in sorted(_listening_ports(group) - {s3_port}):
            try:
                await http.get(f"http://127.0.0.1:{port}/")
            except httpx.HTTPError:
                grpc_ports.append(port)  # Not HTTP/1: a gRPC port (TLS only).
            else:
                http_ports.append(port)
        assert len(http_ports) == _WEED_COMPONENTS - 1, http_ports
        answers = []
        for port in http_ports:
            base = f"http://127.0.0.1:{port}"
            upload = {"file": ("planted", b"planted")}
            answers += [
                await http.get(f"{base}/buckets/{bucket}/object"),
                await http.get(f"{base}/buckets/{bucket}/"),
                await http.put(f"{base}/buckets/{bucket}/planted", content=b"planted"),
                await http.post(f"{base}/buckets/{bucket}/", files=upload),
                await http.delete(f"{base}/buckets/{bucket}/object"),
                await http.post(f"{base}/submit", files=upload),
                await http.get(f"{base}/dir/assign"),
                await http.get(f"{base}/col/delete", params={"collection": bucket}),
                await http.get(f"{base}/vol/grow", params={"count": "1", "collection": "x"}),
            ]
    granted = [
        (str(answer.request.url), answer.status_code)
        for answer in answers
        if not 400 <= answer.status_code < 500 or b"secret" in answer.content
    ]
    assert granted == []
    assert client.get_object(bucket, "object").read() == b"secret"
    assert [item.object_name for item in client.list_objects(bucket)] == ["object"]
    assert len(grpc_ports) == _WEED_COMPONENTS, grpc_ports
    for port in grpc_ports:
        assert await _plaintext_grpc_code(port) == grpc.StatusCode.UNAVAILABLE, port
        assert await _refuses_tls_without_a_client_certificate(port), port


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
