"""gRPC between services over TLS (issue 8): real sockets, certificates made for the module.

One synthetic worker serves two in-process schedulers under the module's broker prefix: one
with a TLS port, one with mutual TLS (`tls_client_ca`). A `SchedulerClient` and a real
`llm-mesh gateway` reach them with the right credentials; plaintext, a foreign CA, a missing
or foreign client certificate are refused (UNAVAILABLE: the handshake fails); bad PEM files
stop a scheduler at start, before it connects to anything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from request_path_harness import Mesh, chat, kinds

from bench.process_mesh import LLM_MESH, ServiceProcess, start_process
from plumbing.certificates import CertificateAuthority, Leaf
from plumbing.client import SchedulerClient
from plumbing.grpc_tls import channel_credentials
from plumbing.keystore import Keystore
from plumbing.settings import MeshSettings
from scheduler.server import SchedulerServer
from scheduler.settings import Settings as SchedulerSettings

#: The model of the gateway's default routing, served here by the synthetic engine.
MODEL = "smollm2-135m"
CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Pki:
    """The module's CA, its server and client leaves, and a foreign CA with a client leaf."""

    ca: CertificateAuthority
    server: Leaf
    client: Leaf
    other_ca: CertificateAuthority
    stranger: Leaf


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "mesh")
    other_ca = CertificateAuthority(directory, "other")
    return Pki(
        ca=ca,
        server=ca.server("scheduler"),
        client=ca.client("gateway"),
        other_ca=other_ca,
        stranger=other_ca.client("stranger"),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_scheduler(mesh: Mesh, pki: Pki) -> SchedulerServer:
    return await mesh.start_scheduler(
        tls_certfile=pki.server.certfile, tls_keyfile=pki.server.keyfile
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mtls_scheduler(mesh: Mesh, pki: Pki) -> SchedulerServer:
    return await mesh.start_scheduler(
        tls_certfile=pki.server.certfile,
        tls_keyfile=pki.server.keyfile,
        tls_client_ca=pki.ca.certfile,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(
    mesh: Mesh, tls_scheduler: SchedulerServer, mtls_scheduler: SchedulerServer
) -> ServiceProcess:
    """The worker, known to both schedulers."""
    worker = await mesh.start_worker(MODEL, scheduler=tls_scheduler, tokens=4, token_interval=0.005)
    async with asyncio.timeout(CALL_TIMEOUT):
        await mtls_scheduler.registry.wait_for(
            lambda registry: any(beat.ready for beat in registry.workers())
        )
    return worker


def _target(scheduler: SchedulerServer) -> str:
    return f"127.0.0.1:{scheduler.port}"


async def _refusal(client: SchedulerClient) -> grpc.StatusCode:
    """The status of a ListModels call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.list_models(timeout=CALL_TIMEOUT)
    return failure.value.code()


async def test_scheduler_client_streams_over_tls(
    tls_scheduler: SchedulerServer, worker: ServiceProcess, pki: Pki
) -> None:
    credentials = channel_credentials(pki.ca.certfile)
    async with SchedulerClient(_target(tls_scheduler), credentials=credentials) as client:
        async with asyncio.timeout(CALL_TIMEOUT):
            events = [event async for event in client.generate(chat("one two", model=MODEL))]
        models = await client.list_models(timeout=CALL_TIMEOUT)
    order = kinds(events)
    assert order[0] == "generation_start" and order[-1] == "generation_finish"
    assert "error" not in order and order.count("sequence_delta") >= 1
    assert [(model.name, model.ready_workers) for model in models] == [(MODEL, 1)]


async def test_plaintext_client_is_refused(tls_scheduler: SchedulerServer) -> None:
    async with SchedulerClient(_target(tls_scheduler)) as client:
        assert await _refusal(client) == grpc.StatusCode.UNAVAILABLE


async def test_client_trusting_another_ca_is_refused(
    tls_scheduler: SchedulerServer, pki: Pki
) -> None:
    credentials = channel_credentials(pki.other_ca.certfile)
    async with SchedulerClient(_target(tls_scheduler), credentials=credentials) as client:
        assert await _refusal(client) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(
    mtls_scheduler: SchedulerServer, worker: ServiceProcess, pki: Pki
) -> None:
    without = channel_credentials(pki.ca.certfile)
    foreign = channel_credentials(
        pki.ca.certfile, certfile=pki.stranger.certfile, keyfile=pki.stranger.keyfile
    )
    for credentials in (without, foreign):
        async with SchedulerClient(_target(mtls_scheduler), credentials=credentials) as client:
            assert await _refusal(client) == grpc.StatusCode.UNAVAILABLE
    signed = channel_credentials(
        pki.ca.certfile, certfile=pki.client.certfile, keyfile=pki.client.keyfile
    )
    async with SchedulerClient(_target(mtls_scheduler), credentials=signed) as client:
        models = await client.list_models(timeout=CALL_TIMEOUT)
    assert [model.name for model in models] == [MODEL]


async def test_gateway_answers_through_a_mutual_tls_scheduler(
    mtls_scheduler: SchedulerServer, worker: ServiceProcess, pki: Pki, tmp_path: Path
) -> None:
    keystore = Keystore.open(f"sqlite:///{tmp_path / 'llm-mesh.sqlite3'}")
    api_key, _ = keystore.create_key(f"tls-{uuid.uuid4().hex[:6]}")
    keystore.close()
    gateway = await start_process(
        "gateway",
        [LLM_MESH, "gateway", "--port", "0"],
        environment={
            **os.environ,
            "LLM_MESH_DATA_DIR": str(tmp_path),
            "LLM_MESH_GATEWAY_SCHEDULER_TARGETS": _target(mtls_scheduler),
            "LLM_MESH_GATEWAY_SCHEDULER_TLS_CA": str(pki.ca.certfile),
            "LLM_MESH_GATEWAY_SCHEDULER_TLS_CERTFILE": str(pki.client.certfile),
            "LLM_MESH_GATEWAY_SCHEDULER_TLS_KEYFILE": str(pki.client.keyfile),
        },
        ready="llm-mesh gateway ready:",
        log=tmp_path / "gateway.log",
    )
    try:
        # Ready = the scheduler's ListModels (over mutual TLS) names the model.
        await gateway.wait_http_ok(f"{gateway.http_url}/readyz", within=30)
        async with httpx.AsyncClient(
            base_url=gateway.http_url, headers={"authorization": f"Bearer {api_key}"}
        ) as http:
            response = await http.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                timeout=CALL_TIMEOUT,
            )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
    finally:
        assert await gateway.stop() in (0, -signal.SIGTERM)


async def test_a_bad_pem_file_stops_the_scheduler_before_it_connects(
    pki: Pki, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    server = pki.server
    cases: list[tuple[Path, Path, Path | None, Path]] = [
        # certificate, key, client CA, the file the error names
        (server.certfile, pki.client.keyfile, None, server.certfile),  # not its key
        (server.certfile, garbage, None, garbage),
        (server.certfile, server.keyfile, garbage, garbage),
    ]
    for certfile, keyfile, client_ca, named in cases:
        # An unreachable broker: the start must fail on the files, before connecting.
        settings = SchedulerSettings(
            mesh=MeshSettings(amqp_url="amqp://guest:guest@127.0.0.1:1/"),
            grpc_bind="127.0.0.1:0",
            http_bind="127.0.0.1:0",
            tls_certfile=certfile,
            tls_keyfile=keyfile,
            tls_client_ca=client_ca,
        )
        with pytest.raises(ValueError, match=str(named)):
            await SchedulerServer(settings).start()
