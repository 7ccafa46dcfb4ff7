"""Task queue figures from RabbitMQ's management HTTP API (the `rabbitmq_management` plugin).

A passive declare (`TaskBroker.queue_states`) answers with a queue's ready messages and
consumers only. The management API also counts the messages delivered to consumers and not
yet acknowledged: the tasks workers hold now (a worker acks a task after its last chunk).
`ManagementApi.queue_states` reads `GET /api/queues/{vhost}/{name}` for each model's task
queue (https://www.rabbitmq.com/docs/http-api-reference), asking only for the columns it uses.

The figures are the broker's statistics: collected every `collect_statistics_interval` and
kept as samples every `management.sample_retention_policies` step (5 s each by default), they
lag the queue by up to ten seconds. A queue the statistics do not cover yet (declared a
moment ago) is left out of the answer until they do.

Credentials: the management URL's own user and password, else the AMQP URL's (guest/guest
when it names none, as for AMQP); the vhost is the AMQP URL's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import httpx

from plumbing.topology import Topology
from scheduler.broker import QueueState
from scheduler.errors import WorkerUnavailable

__all__ = ["ManagementApi"]

_COLUMNS: Final = "messages_ready,messages_unacknowledged,consumers"
#: The AMQP defaults (aiormq's too) when the AMQP URL names no user or password.
_DEFAULT_CREDENTIAL: Final = "guest"


class ManagementApi:
    """Reads task queues' figures over HTTP; `aclose` when done."""

    def __init__(
        self,
        url: str,
        *,
        amqp_url: str,
        topology: Topology,
        timeout: float,
    ) -> None:
        management = httpx.URL(url)
        amqp = urlsplit(amqp_url)
        if management.username:
            auth = (management.username, management.password)
        else:
            auth = (
                unquote(amqp.username or _DEFAULT_CREDENTIAL),
                unquote(amqp.password or _DEFAULT_CREDENTIAL),
            )
        vhost = unquote(amqp.path[1:]) if amqp.path not in ("", "/") else "/"
        self._vhost = quote(vhost, safe="")
        self._topology = topology
        self._http = httpx.AsyncClient(
            base_url=management.copy_with(userinfo=b""),
            auth=auth,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def queue_states(self, models: Iterable[str]) -> dict[str, QueueState | None]:
        """Each model's task queue now, as the broker's statistics tell it; None for a queue
        that does not exist; a queue without statistics yet is left out.

        Raises `WorkerUnavailable` when the API cannot be reached or refuses the request.
        """
        states: dict[str, QueueState | None] = {}
        for answer in await asyncio.gather(*(self._queue(model) for model in models)):
            states.update(answer)
        return states

    async def _queue(self, model: str) -> dict[str, QueueState | None]:
        """`{model: state}` (None: no such queue), or `{}` while it has no statistics."""
        path = f"api/queues/{self._vhost}/{quote(self._topology.task_queue(model), safe='')}"
        try:
            response = await self._http.get(path, params={"columns": _COLUMNS})
        except httpx.HTTPError as exc:
            raise WorkerUnavailable(
                f"the broker's management API is unreachable: {type(exc).__name__}"
            ) from exc
        if response.status_code == httpx.codes.NOT_FOUND:
            return {model: None}
        if response.status_code != httpx.codes.OK:
            raise WorkerUnavailable(
                f"the broker's management API answered {response.status_code} for {path}"
            )
        try:
            figures: dict[str, Any] = response.json()
            return {
                model: QueueState(
                    messages=int(figures["messages_ready"]),
                    consumers=int(figures["consumers"]),
                    unacknowledged=int(figures["messages_unacknowledged"]),
                )
            }
        except KeyError:
            return {}
        except (ValueError, TypeError) as exc:
            raise WorkerUnavailable(
                f"the broker's management API answered malformed figures for {path}"
            ) from exc
