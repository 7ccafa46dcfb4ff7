"""An HTTP client that stops reading: it sends a streamed request, reads the response headers,
then never reads again.

Its socket's receive buffer is made small before it connects (`SO_RCVBUF`), so the server's
writes back up after a few hundred kilobytes instead of the megabytes loopback autotuning
would otherwise absorb.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = ["StalledClient"]

_RECEIVE_BUFFER: Final = 4096


class StalledClient:
    """One stalled SSE request; `open` sends it and reads up to the headers, `close` resets."""

    def __init__(
        self, base_url: str, api_key: str, body: Mapping[str, Any], *, path: str = "/v1/generate"
    ) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname is not None and parts.port is not None
        self._address = (parts.hostname, parts.port)
        self._api_key = api_key
        self._path = path
        self._body = json.dumps(dict(body)).encode()
        self._writer: asyncio.StreamWriter | None = None
        #: The response's status code, once `open` returned.
        self.status = 0

    async def open(self) -> None:
        """Connects, sends the request and reads the status line and headers."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self._address)
        # A small stream limit: asyncio must not read ahead on our behalf either.
        reader, writer = await asyncio.open_connection(sock=sock, limit=_RECEIVE_BUFFER)
        self._writer = writer
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        host, port = self._address
        writer.write(
            f"POST {self._path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
            f"authorization: Bearer {self._api_key}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(self._body)}\r\naccept: text/event-stream\r\n\r\n".encode()
            + self._body
        )
        await writer.drain()
        status_line = await reader.readline()
        self.status = int(status_line.split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        # From here on nothing is read: stop the transport from filling asyncio's buffer.
        transport.pause_reading()

    def close(self) -> None:
        """Drops the connection at once (RST: unread data is discarded)."""
        if self._writer is not None:
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._writer.close()
