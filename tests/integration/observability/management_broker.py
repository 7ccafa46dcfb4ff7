"""A private RabbitMQ node with the management plugin, for the queue figures only its HTTP API
gives (unacknowledged messages). The machine's node has no management plugin.

It is the fault tests' `PrivateBroker` (tests/faults/private_broker.py: own ports, node name,
data directory, loopback only) with `rabbitmq_management` enabled on a free loopback port, and
statistics collected every `STATISTICS_INTERVAL_MS` and sampled every second instead of every
5 s (`collect_statistics_interval`, `management.sample_retention_policies`), so that a
figure the API shows lags the queue by about half a second instead of up to ten.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Final

import httpx

__all__ = ["ManagementBroker"]

STATISTICS_INTERVAL_MS: Final = 100
_POLL_INTERVAL: Final = 0.1


def _private_broker() -> ModuleType:
    """tests/faults/private_broker.py (test directories are not packages)."""
    if "private_broker" in sys.modules:
        return sys.modules["private_broker"]
    path = Path(__file__).resolve().parents[2] / "faults" / "private_broker.py"
    spec = importlib.util.spec_from_file_location("private_broker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["private_broker"] = module
    spec.loader.exec_module(module)
    return module


_private = _private_broker()


class ManagementBroker(_private.PrivateBroker):  # type: ignore[misc,name-defined]
    """A `PrivateBroker` whose management API answers at `management_url`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.management_port: int = _private.free_port()
        # PrivateBroker wrote these files; the node reads them when it boots.
        (root / "enabled_plugins").write_text("[rabbitmq_management].\n")
        with (root / "rabbitmq.conf").open("a") as config:
            config.write(
                f"management.tcp.ip = 127.0.0.1\n"
                f"management.tcp.port = {self.management_port}\n"
                f"collect_statistics_interval = {STATISTICS_INTERVAL_MS}\n"
                "management.sample_retention_policies.global.minute = 1\n"
                "management.sample_retention_policies.basic.minute = 1\n"
                "management.sample_retention_policies.detailed.10 = 1\n"
            )

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}/"

    async def start(self) -> None:
        """Boots the node; returns once AMQP and the management API answer."""
        await super().start()
        async with httpx.AsyncClient(auth=("guest", "guest")) as http:
            async with asyncio.timeout(_private.START_TIMEOUT):
                while True:
                    try:
                        response = await http.get(f"{self.management_url}api/overview")
                        if response.status_code == httpx.codes.OK:
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(_POLL_INTERVAL)  # the plugin's listener starts last
