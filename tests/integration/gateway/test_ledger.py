"""The usage ledger is durable (a killed gateway loses no finished request) on SQLite and
PostgreSQL, and `llm-mesh usage` reports it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from gateway_mesh import MODEL, Mesh, start_gateway

from bench.process_mesh import LLM_MESH
from plumbing.keystore import Keystore

pytestmark = pytest.mark.asyncio(loop_scope="session")

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A schema of its own in the `test` database, dropped afterwards."""
    schema = f"ledger_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_ledger_survives_a_gateway_kill(
    mesh: Mesh, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        database_url = request.getfixturevalue("postgres_url")
    keystore = await asyncio.to_thread(Keystore.open, _sqlalchemy(database_url))
    try:
        api_key, record = keystore.create_key("durable")
        gateway = await start_gateway(
            mesh, keystore, tmp_path / "gateway.log", database_url=database_url
        )
        try:
            async with httpx.AsyncClient(
                base_url=gateway.url, headers={"authorization": f"Bearer {api_key}"}
            ) as client:
                response = await client.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 200
            usage = response.json()["usage"]
        finally:
            assert await gateway.process.stop(signal.SIGKILL) == -signal.SIGKILL
        (entry,) = keystore.usage_records(key_id=record.key_id)
        assert entry.status == "ok"
        assert (entry.prompt_tokens, entry.completion_tokens) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert entry.request_id and response.json()["id"] == f"chatcmpl-{entry.request_id}"
        assert entry.total_ms is not None and entry.total_ms > 0
        report = await asyncio.to_thread(
            subprocess.run,
            [LLM_MESH, "usage", "--since", "1h", "--json"],
            env={**os.environ, "LLM_MESH_DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        (total,) = [json.loads(line) for line in report.stdout.splitlines()]
        assert total["key_id"] == record.key_id and total["model"] == MODEL
        assert (total["requests"], total["ok"]) == (1, 1)
        assert total["completion_tokens"] == usage["completion_tokens"]
    finally:
        keystore.close()


def _sqlalchemy(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg://")
