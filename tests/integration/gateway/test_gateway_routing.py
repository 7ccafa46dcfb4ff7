"""The routing file at work: an invalid one stops the gateway, naming the entry; an external
model whose provider is down falls back to its `fallback`; TLS on the listener."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from gateway_mesh import MODEL, Mesh, start_gateway

from bench.process_mesh import LLM_MESH
from plumbing.keystore import Keystore

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the probe is closed


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (
            "models:\n  good: {backend: self_hosted}\n  broken: {backend: openai}\n",
            ["models.broken", "api_key_env"],
        ),
        (
            "default_quotas: {requests_per_minute: 0}\nmodels:\n  good: {backend: self_hosted}\n",
            ["default_quotas.requests_per_minute"],
        ),
    ],
    ids=["model", "default_quotas"],
)
async def test_invalid_routing_file_refuses_to_start(
    tmp_path: Path, content: str, named: list[str]
) -> None:
    routing = tmp_path / "models.yaml"
    routing.write_text(content)
    result = await asyncio.to_thread(
        subprocess.run,
        [LLM_MESH, "gateway", "--port", "0"],
        env={**os.environ, "LLM_MESH_MODELS": str(routing)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(routing) in result.stderr
    for name in named:
        assert name in result.stderr


async def test_unavailable_provider_falls_back(
    mesh: Mesh, sqlite_keystore: Keystore, tmp_path: Path
) -> None:
    routing = tmp_path / "models.yaml"
    routing.write_text(
        f"""
models:
  {MODEL}: {{backend: self_hosted}}
  remote-gpt:
    backend: openai
    upstream_model: gpt-4o-mini
    base_url: http://127.0.0.1:{_closed_port()}/v1
    api_key_env: TEST_OPENAI_KEY
    connect_timeout: 1
    fallback: {MODEL}
"""
    )
    gateway = await start_gateway(
        mesh,
        sqlite_keystore,
        tmp_path / "gateway.log",
        extra_env={"LLM_MESH_MODELS": str(routing), "TEST_OPENAI_KEY": "sk-test"},
    )
    try:
        api_key, record = sqlite_keystore.create_key("fallback")
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"authorization": f"Bearer {api_key}"}, timeout=30
        ) as client:
            models = (await client.get("/v1/models")).json()
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "remote-gpt",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3,
                },
            )
        assert sorted(model["id"] for model in models["data"]) == sorted([MODEL, "remote-gpt"])
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MODEL
        (entry,) = sqlite_keystore.usage_records(key_id=record.key_id)
        assert (entry.model, entry.status) == ("remote-gpt", "ok")
    finally:
        await gateway.process.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_listener(mesh: Mesh, sqlite_keystore: Keystore, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(cafile=str(cert))
    gateway = await start_gateway(
        mesh,
        sqlite_keystore,
        tmp_path / "gateway.log",
        extra_env={
            "LLM_MESH_GATEWAY_TLS_CERTFILE": str(cert),
            "LLM_MESH_GATEWAY_TLS_KEYFILE": str(key),
        },
        verify=context,
    )
    try:
        assert gateway.url.startswith("https://")
        async with httpx.AsyncClient(base_url=gateway.url, verify=context) as client:
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await gateway.process.stop()
