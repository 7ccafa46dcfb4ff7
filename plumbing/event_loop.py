"""The event loop every service runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv) makes each socket write, timer and callback several times cheaper than the
default selector loop, and a streaming service does thousands of each per second (the
overhead benchmark, `bench/overhead.py`). grpc.aio, aio-pika and uvicorn all run on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Runs `main` to completion on a new event loop (as `asyncio.run` does)."""
    try:
        import uvloop
    except ImportError:  # Not installable everywhere (e.g. Windows): asyncio's loop works too.
        return asyncio.run(main)
    return uvloop.run(main)
