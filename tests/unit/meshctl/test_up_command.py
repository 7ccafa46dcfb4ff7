"""`llm-mesh up`: its options, and the plan it makes from the settings before starting anything."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from meshctl._local_broker import BrokerUnavailable, broker_address
from meshctl.main import build_parser
from meshctl.up import DEFAULT_PREFIX, UpError, make_plan


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LLM_MESH_* setting of the developer's shell leaks in; a throwaway data directory."""
    import os

    for name in list(os.environ):
        if name.startswith("LLM_MESH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLM_MESH_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_defaults() -> None:
    args = build_parser().parse_args(["up"])
    assert args.engine == "vllm"
    assert args.port is None and args.host is None
    assert args.ready_timeout > 0 and args.stop_timeout > 0


def test_options() -> None:
    args = build_parser().parse_args(["up", "--engine", "synthetic", "--port", "0"])
    assert (args.engine, args.port) == ("synthetic", 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--engine", "llama"])


def test_plan_uses_its_own_prefix_and_data_dir(tmp_path: Path) -> None:
    plan = make_plan(build_parser().parse_args(["up", "--port", "0"]))
    assert plan.prefix == DEFAULT_PREFIX
    assert plan.environment["LLM_MESH_BROKER_PREFIX"] == DEFAULT_PREFIX
    assert plan.data_dir == (tmp_path / "data").resolve()
    assert plan.environment["LLM_MESH_DATA_DIR"] == str(plan.data_dir)
    assert plan.gateway_bind == ("127.0.0.1", 0)
    assert plan.engine == "vllm"


def test_plan_keeps_a_configured_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MESH_BROKER_PREFIX", "mine.")
    assert make_plan(build_parser().parse_args(["up", "--port", "0"])).prefix == "mine."
    # Empty is the deployed stacks' prefix, whose queues `up` must never delete.
    monkeypatch.setenv("LLM_MESH_BROKER_PREFIX", "")
    assert make_plan(build_parser().parse_args(["up", "--port", "0"])).prefix == DEFAULT_PREFIX


def test_plan_shortens_grace_periods_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MESH_WORKER_GRACE_PERIOD", "2")
    plan = make_plan(build_parser().parse_args(["up", "--port", "0", "--stop-timeout", "15"]))
    assert plan.environment["LLM_MESH_WORKER_GRACE_PERIOD"] == "2"
    for name in ("LLM_MESH_SCHEDULER_GRACE_PERIOD", "LLM_MESH_GATEWAY_SHUTDOWN_GRACE"):
        assert float(plan.environment[name]) < 15


def test_a_taken_gateway_port_is_refused_with_advice(taken_port: int) -> None:
    with pytest.raises(UpError, match="--port 0"):
        make_plan(build_parser().parse_args(["up", "--port", str(taken_port)]))


def test_taken_service_ports_become_free_ones(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    monkeypatch.setenv("LLM_MESH_SCHEDULER_GRPC_BIND", f"127.0.0.1:{taken_port}")
    monkeypatch.setenv("LLM_MESH_WORKER_HTTP_BIND", f"127.0.0.1:{taken_port}")
    plan = make_plan(build_parser().parse_args(["up", "--port", "0"]))
    assert plan.scheduler_grpc_bind == "127.0.0.1:0"
    assert plan.worker_http_bind == "127.0.0.1:0"


def test_invalid_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MESH_WORKER_CAPACITY", "zero")
    with pytest.raises(ValidationError, match="capacity"):
        make_plan(build_parser().parse_args(["up", "--port", "0"]))


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", ("127.0.0.1", 5672)),
        ("amqp://localhost", ("localhost", 5672)),
        ("amqps://user:secret@broker.example:5999/vhost", ("broker.example", 5999)),
        ("amqps://broker.example", ("broker.example", 5671)),
    ],
)
def test_broker_address(url: str, address: tuple[str, int]) -> None:
    assert broker_address(url) == address


def test_broker_address_refuses_other_schemes() -> None:
    with pytest.raises(BrokerUnavailable, match="amqp://"):
        broker_address("http://127.0.0.1:5672/")


def test_a_routing_file_with_other_self_hosted_models_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    routing = tmp_path / "models.yaml"
    routing.write_text(
        "models:\n"
        "  smollm2-135m: {backend: self_hosted}\n"
        "  llama-70b: {backend: self_hosted}\n"
        "  gpt-4o-mini: {backend: openai, api_key_env: OPENAI_API_KEY}\n"
    )
    monkeypatch.setenv("LLM_MESH_MODELS", str(routing))
    with pytest.raises(UpError, match="llama-70b"):
        make_plan(build_parser().parse_args(["up", "--port", "0"]))
    routing.write_text("models:\n  smollm2-135m: {backend: carrier-pigeon}\n")
    with pytest.raises(UpError, match=re.escape("models.smollm2-135m.backend")):
        make_plan(build_parser().parse_args(["up", "--port", "0"]))
