"""Parameter-grid gate: a pairwise (all-pairs) grid of generation parameters on the real model.

Every pair of values of any two parameters occurs in at least one case (`allpairspy`'s greedy
construction, deterministic: the same 22 cases every run). Each case must complete with a
well-formed event stream: every sequence started once, before its deltas, and finished once,
last; finish reasons consistent with `max_tokens` and the stop sequences; the usage equal to
the tokens streamed; per-token log probabilities where asked; constraints honoured.

Out-of-range values are rejected by the gateway with a 400 naming the field, before anything
is queued (the gateway's scheduler target here is a closed port: reaching it would be a 503).
Combinations only the engine knows to be invalid (several greedy sequences, for vLLM) are
rejected by the worker before generation, which the gateway also turns into a 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from allpairspy import AllPairs  # type: ignore[import-untyped]
from llmmesh.v1 import chat_pb2, events_pb2
from quality_engine import MODEL, Run, chat_request, generate, struct

from gateway.app import create_app
from gateway.settings import GatewaySettings
from plumbing.keystore import Keystore
from plumbing.settings import MeshSettings
from worker.engine import VllmEngine
from worker.engine_protocol import RequestRejected

_CHOICES = ["yes", "no", "maybe later"]
_REGEX = r"[a-z]{1,6}( [a-z]{1,6}){0,3}"
_SCHEMA = {
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": 10}},
    "required": ["word"],
}
_CONSTRAINTS = {
    "none": None,
    "choice": chat_pb2.StructuredOutput(choice=chat_pb2.ChoiceConstraint(choices=_CHOICES)),
    "regex": chat_pb2.StructuredOutput(regex=_REGEX),
    "json_schema": chat_pb2.StructuredOutput(
        json_schema=chat_pb2.JsonSchemaConstraint(name="word", schema=struct(_SCHEMA))
    ),
}
# name → values; None = unset (the engine's default).
_AXES: dict[str, list[Any]] = {
    "temperature": [None, 0.0, 0.8, 1.5],
    "top_p": [None, 0.9, 0.5],
    "top_k": [None, 1, 40],
    "max_tokens": [1, 4, 8],
    "n": [1, 2, 3],
    "stop": [(), (".",), (" the", "\n")],
    "presence_penalty": [None, 1.0, -1.5],
    "frequency_penalty": [None, 0.5, -0.5],
    "seed": [None, 7, 123456789],
    "logprobs": ["off", "on", "top3"],
    "structured_output": list(_CONSTRAINTS),
}


@dataclass(frozen=True)
class _Case:
    values: dict[str, Any]

    @property
    def id(self) -> str:
        return "-".join(f"{name}={value}" for name, value in self.values.items())

    def request(self) -> chat_pb2.ChatRequest:
        parameters: dict[str, Any] = {
            name: value
            for name, value in self.values.items()
            if value is not None and name not in ("stop", "logprobs", "structured_output")
        }
        parameters["stop"] = list(self.values["stop"])
        if self.values["logprobs"] != "off":
            parameters["logprobs"] = True
        if self.values["logprobs"] == "top3":
            parameters["top_logprobs"] = 3
        constraint = _CONSTRAINTS[self.values["structured_output"]]
        if constraint is not None:
            parameters["structured_output"] = constraint
        return chat_request("Say something about the weather.", **parameters)


_CASES = [_Case(dict(zip(_AXES, row, strict=True))) for row in AllPairs(list(_AXES.values()))]


def test_the_grid_is_pairwise_and_small() -> None:
    assert len(_CASES) <= 50
    names = list(_AXES)
    for first_index, first in enumerate(names):
        for second in names[first_index + 1 :]:
            covered = {(case.values[first], case.values[second]) for case in _CASES}
            expected = {(a, b) for a in _AXES[first] for b in _AXES[second]}
            assert covered == expected, (first, second)


def _assert_well_formed(case: _Case, run: Run) -> None:
    values = case.values
    sequences = values["n"]
    seen: dict[int, list[str]] = {}
    for event in run.events:
        kind = event.WhichOneof("event")
        assert kind in ("sequence_start", "sequence_delta", "sequence_finish"), kind
        kinds = seen.setdefault(getattr(event, kind).index, [])
        assert not kinds or kinds[-1] != "sequence_finish", "an event after the finish"
        kinds.append(kind)
    assert sorted(seen) == list(range(sequences))
    for kinds in seen.values():
        assert kinds[0] == "sequence_start" and kinds.count("sequence_start") == 1
        assert kinds[-1] == "sequence_finish" and kinds.count("sequence_finish") == 1
    tokens = run.token_ids()
    assert run.completion_tokens == sum(len(ids) for ids in tokens.values())
    texts = run.texts()
    for index, finish in run.finishes().items():
        count = len(tokens.get(index, []))
        text = texts.get(index, "")
        assert 1 <= count <= values["max_tokens"]
        if finish.reason == events_pb2.FINISH_REASON_LENGTH:
            assert count == values["max_tokens"]
            assert not finish.HasField("stop_sequence")
        else:
            assert finish.reason == events_pb2.FINISH_REASON_STOP
        if finish.HasField("stop_sequence"):
            assert finish.stop_sequence in values["stop"]
        for stop in values["stop"]:
            assert stop not in text
        if finish.reason == events_pb2.FINISH_REASON_STOP and not finish.HasField("stop_sequence"):
            _assert_constraint(values["structured_output"], text)
    for delta in run.of("sequence_delta"):
        if values["logprobs"] == "off":
            assert not delta.logprobs
            continue
        assert len(delta.logprobs) == len(delta.token_ids)
        for token in delta.logprobs:
            assert token.logprob <= 0.0
            assert len(token.top_logprobs) == (3 if values["logprobs"] == "top3" else 0)


def _assert_constraint(kind: str, text: str) -> None:
    if kind == "choice":
        assert text in _CHOICES
    elif kind == "regex":
        assert re.fullmatch(_REGEX, text), text
    elif kind == "json_schema":
        jsonschema.validate(json.loads(text), _SCHEMA)


@pytest.mark.vllm
@pytest.mark.parametrize("case", _CASES, ids=[case.id for case in _CASES])
async def test_every_case_streams_well_formed(engine: VllmEngine, case: _Case) -> None:
    if case.values["temperature"] == 0.0 and case.values["n"] > 1:
        # vLLM refuses several greedy sequences (they would be identical copies): the one
        # combination of the grid that is invalid, rejected before anything is generated.
        with pytest.raises(RequestRejected, match="n must be 1 when using greedy sampling"):
            await engine.prepare("grid-greedy-n", case.request())
        assert engine.running == 0
        return
    _assert_well_formed(case, await generate(engine, case.request()))


# --- Out-of-range values, at the HTTP level -------------------------------------------------


@dataclass
class _Gateway:
    client: httpx.AsyncClient
    api_key: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[_Gateway]:
    """The gateway app with its lifespan, in front of no scheduler (a closed port)."""
    data = tmp_path_factory.mktemp("grid-gateway")
    database = f"sqlite:///{data / 'keys.sqlite3'}"
    keystore = Keystore.open(database)
    api_key, _ = keystore.create_key("grid")
    settings = GatewaySettings(
        mesh=MeshSettings(data_dir=Path(data), database_url=database),
        scheduler_targets=["127.0.0.1:9"],
    )
    app = create_app(settings, keystore=keystore)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield _Gateway(client, api_key)
    finally:
        keystore.close()


def _native_body(**parameters: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "ROLE_USER", "content": [{"text": "Hi."}]}],
        "generation_parameters": parameters,
    }


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"temperature": 2.5}, "generation_parameters.temperature"),
        ({"top_p": 0}, "generation_parameters.top_p"),
        ({"top_k": 0}, "generation_parameters.top_k"),
        ({"max_tokens": 0}, "generation_parameters.max_tokens"),
        ({"n": 1000}, "generation_parameters.n"),
        ({"presence_penalty": -3}, "generation_parameters.presence_penalty"),
        ({"frequency_penalty": 2.5}, "generation_parameters.frequency_penalty"),
        ({"logprobs": True, "top_logprobs": 21}, "generation_parameters.top_logprobs"),
        ({"stop": ["ok", ""]}, "generation_parameters.stop.1"),
        ({"beam_search": {"beam_width": 0}}, "generation_parameters.beam_search.beam_width"),
        (
            {"structured_output": {"json_schema": {"name": "x", "schema": {"type": "text"}}}},
            "generation_parameters.structured_output.json_schema.schema",
        ),
        (
            {"structured_output": {"choice": {"choices": []}}},
            "generation_parameters.structured_output.choice.choices",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_out_of_range_is_a_400_naming_the_field(
    gateway: _Gateway, parameters: dict[str, Any], field: str
) -> None:
    response = await gateway.client.post(
        "/v1/generate",
        json=_native_body(**parameters),
        headers={"authorization": f"Bearer {gateway.api_key}"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert field in error["message"]
    assert error["retryable"] is False


async def test_openai_api_names_its_own_parameter(gateway: _Gateway) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "required": "name"}},
        },
    }
    response = await gateway.client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {gateway.api_key}"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert "not a valid JSON schema" in error["message"]
