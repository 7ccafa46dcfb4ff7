"""Fixtures of the request-path tests: a broker prefix and a `Mesh` per test module.

Each module gets a random prefix (`test-<8 hex>.`); at the end of the module every process is
stopped, everything under the prefix deleted, and the broker is checked to hold nothing of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from broker_inspector import BrokerInspector
from request_path_harness import Mesh


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mesh(
    broker: BrokerInspector, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    log_dir: Path = tmp_path_factory.mktemp("request-path")
    mesh = Mesh(broker.prefix, log_dir)
    try:
        yield mesh
    finally:
        await mesh.aclose()
