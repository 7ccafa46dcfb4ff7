"""The one small interface between the worker's consumer and an inference engine.

`worker/engine.py` implements it with vLLM (only it and the `worker/vllm_*.py` modules it uses
import vLLM); `worker/synthetic.py` with a deterministic fixed-rate engine for benchmarks and
fault tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmmesh.v1 import chat_pb2, events_pb2

__all__ = ["Engine", "EngineOutput", "ModelCard", "PreparedRequest", "RequestRejected"]


class RequestRejected(Exception):
    """The task cannot run (invalid for this model, or its stored request is out of reach);
    it becomes the task's rejection (chunk 0).

    `code` is an `events_pb2.ErrorCode` (engines: INVALID_REQUEST or CONTEXT_LENGTH_EXCEEDED;
    fetching a stored request also uses UNAVAILABLE and INTERNAL, see `worker.payloads`);
    `field` names the request field at fault (e.g. "messages", "tools").
    """

    def __init__(self, code: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ModelCard:
    """What a worker announces about the model it serves."""

    name: str
    max_context: int
    supports_tools: bool


@dataclass
class PreparedRequest:
    """A request rendered and validated for one engine, ready to generate.

    `prompt_tokens` is the length of the rendered prompt; `engine_input` is engine-specific
    (the vLLM engine keeps prompt token ids and sampling parameters there).
    """

    request_id: str
    prompt_tokens: int
    sequences: int
    engine_input: Any = field(default=None, repr=False)


@dataclass
class EngineOutput:
    """One step of a generation: the canonical events it produced, in order.

    `events` holds only SequenceStart, SequenceDelta and SequenceFinish events (the consumer
    adds GenerationStart and GenerationFinish); `completion_tokens` is the number of tokens
    generated so far over all sequences (cumulative, so the last output is the usage).
    """

    events: list[events_pb2.StreamEvent]
    completion_tokens: int


class Engine(Protocol):
    """An inference engine serving one model.

    Cancellation: closing the iterator returned by `generate` (or cancelling the task that
    iterates it) aborts the engine's request and frees its compute; `abort` does the same
    from outside.
    """

    @property
    def card(self) -> ModelCard:
        """The served model."""
        ...

    @property
    def running(self) -> int:
        """Requests generating now."""
        ...

    @property
    def aborted_total(self) -> int:
        """Requests aborted before they finished, since start."""
        ...

    async def start(self) -> None:
        """Loads the model; returns when the engine can generate."""
        ...

    async def prepare(self, request_id: str, request: chat_pb2.ChatRequest) -> PreparedRequest:
        """Renders the chat template (and tools), checks the prompt against the context.

        Raises `RequestRejected` when the request is invalid for this model.
        """
        ...

    def generate(self, prepared: PreparedRequest) -> AsyncIterator[EngineOutput]:
        """Generates every sequence of `prepared`, interleaved, each started and finished."""
        ...

    async def abort(self, request_id: str) -> None:
        """Aborts a running request (no-op when it is not running)."""
        ...

    async def healthy(self) -> bool:
        """Whether the engine is alive (no generation is run to find out)."""
        ...

    async def aclose(self) -> None:
        """Stops the engine and any process it started."""
        ...
