"""The replay server shared by this directory's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from replay_server import ReplayServer, serve


@pytest.fixture(scope="module")
async def replay() -> AsyncIterator[ReplayServer]:
    """A replay server on a free loopback port, for the module's tests."""
    server = ReplayServer()
    async with serve(server.app) as port:
        server.port = port
        yield server
