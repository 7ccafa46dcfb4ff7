"""Every command the README shows runs in a test; here, those that need a running mesh.

One `llm-mesh up --engine synthetic` (the real engine's quickstart is `test_quickstart.py`)
serves the README's examples exactly as printed: the curl commands, the openai, anthropic and
gRPC snippets (with `KEY` in the environment and the default addresses replaced by the ones
`up` picked), then the examples `up` printed itself, the `llm-mesh keys` and `llm-mesh usage`
commands of "Operating it" on `up`'s database, and Ctrl-C. The gateway's key cache is off so
that a revoked key fails at once.

`test_every_llm_mesh_command_of_the_readme_parses` checks every `llm-mesh …` and
`docker compose run --rm admin …` command line in the README against the CLI's parser. The
others run elsewhere: `models` in storage/test_models_cli.py, `settings` in
unit/meshctl/test_settings_reference.py, the deploy commands in test_compose.py, `up` in this
directory, and the install and test commands in `.ci/run`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from readme_snippets import README, code_blocks, section
from up_process import (
    LLM_MESH,
    MODEL,
    SERVICES_STOPPED_CLEANLY,
    UpProcess,
    live_members,
    processes_of_run,
)

from meshctl.main import build_parser

#: The addresses the README's examples use: `up`'s defaults.
README_URL = "http://127.0.0.1:8080"
README_GRPC = "127.0.0.1:50051"
#: Bound of one example or command.
COMMAND_TIMEOUT = 60.0


async def _run(
    command: list[str], environment: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Runs a command (bounded); its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    async with asyncio.timeout(COMMAND_TIMEOUT):
        output, errors = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(), errors.decode()


async def _run_snippet(language: str, code: str, up: UpProcess) -> str:
    """Runs a README snippet against `up` (its addresses and key); returns what it printed."""
    assert README_URL in code or README_GRPC in code, code
    code = code.replace(README_URL, up.url).replace(README_GRPC, up.grpc_target)
    interpreter = ["bash", "-euo", "pipefail", "-c"] if language == "sh" else [sys.executable, "-c"]
    status, output, errors = await _run([*interpreter, code], {**os.environ, "KEY": up.api_key})
    assert status == 0, f"{code}\n{errors}"
    return output


def _banner_example(banner: str, kind: str) -> str:
    """The example of one kind in `up`'s banner: the indented block after the line naming it."""
    lines = banner.splitlines()
    start = next(
        n for n, line in enumerate(lines) if line.startswith(("Try it", "or with")) and kind in line
    )
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


async def _llm_mesh(up: UpProcess, *arguments: str) -> str:
    """Runs `llm-mesh ARGUMENTS` with `up`'s settings (its data directory and database)."""
    status, output, errors = await _run([LLM_MESH, *arguments], up.environment)
    assert status == 0, f"llm-mesh {' '.join(arguments)}: {errors}"
    return output


@pytest.mark.asyncio(loop_scope="session")
async def test_the_readme_examples_and_commands_work_against_llm_mesh_up(tmp_path: Path) -> None:
    up = await UpProcess.start(
        tmp_path,
        ["--engine", "synthetic", "--port", "0"],
        settings={"LLM_MESH_GATEWAY_KEY_CACHE_TTL": "0"},
    )
    try:
        assert up.api_key.startswith("lm-") and up.grpc_target
        assert len(up.groups) == 5, up.groups  # up, SeaweedFS, scheduler, worker, gateway

        # "Using it": every example, as printed.
        chat, native = code_blocks(section("curl (OpenAI-compatible, streamed)"), "sh")
        assert (await _run_snippet("sh", chat, up)).rstrip().endswith("data: [DONE]")
        assert "event: generation.finish" in await _run_snippet("sh", native, up)
        for title in (
            "The openai SDK",
            "The anthropic SDK (`/v1/messages`)",
            "gRPC (internal teams)",
        ):
            (snippet,) = code_blocks(section(title), "python")
            assert (await _run_snippet("python", snippet, up)).strip(), title

        # The examples `up` printed, as printed (its own address and key are in them).
        status, output, errors = await _run(
            ["bash", "-euo", "pipefail", "-c", _banner_example(up.banner, "curl")]
        )
        assert status == 0 and output.count("data: ") > 2, errors
        status, output, errors = await _run(
            [sys.executable, "-c", _banner_example(up.banner, "openai")]
        )
        assert status == 0 and output.strip(), errors

        await _keys_commands(up)
        # The dev key's requests: 2 curl, 3 SDK snippets (the gRPC one metered by the
        # scheduler), 2 banner examples.
        await _usage_commands(up, requests=7)

        up.process.send_signal(signal.SIGINT)
        assert await up.wait() == 0, up.tail()
        # Every service stopped gracefully: exit status 0, and nothing logged an error.
        assert up.stop_statuses() == SERVICES_STOPPED_CLEANLY, up.tail()
        assert up.stop_errors() == [], up.tail()
        assert live_members(up.groups) == [], up.tail()
        assert processes_of_run(up.prefix) == [], up.tail()
    finally:
        await up.close()


async def _keys_commands(up: UpProcess) -> None:
    """`llm-mesh keys create|list|revoke` ("Operating it"), and what the gateway makes of them."""
    created = await _llm_mesh(
        up,
        "keys", "create", "--owner", "alice", "--model", MODEL,
        "--requests-per-minute", "60", "--tokens-per-day", "100000",
    )  # fmt: skip
    key_id = re.search(r"^key id: (\S+)$", created, re.MULTILINE)
    api_key = re.search(r"^API key: (lm-\S+)$", created, re.MULTILINE)
    assert key_id and api_key, created
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient(base_url=up.url, timeout=COMMAND_TIMEOUT) as client:
        headers = {"authorization": f"Bearer {api_key.group(1)}"}
        answer = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert answer.status_code == 200, answer.text

        listed = await _llm_mesh(up, "keys", "list")
        row = next(line.split() for line in listed.splitlines() if key_id.group(1) in line)
        assert row[:6] == [key_id.group(1), "alice", MODEL, "60", "100000", "user"], listed

        revoked = await _llm_mesh(up, "keys", "revoke", key_id.group(1))
        assert revoked.strip() == f"revoked {key_id.group(1)}"
        refused = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 401, refused.text
    listed = await _llm_mesh(up, "keys", "list")
    row = next(line.split() for line in listed.splitlines() if key_id.group(1) in line)
    assert row[-1] != "-", listed  # REVOKED holds the time


async def _usage_commands(up: UpProcess, requests: int) -> None:
    """`llm-mesh usage --since 24h` as a table and `--json`: the dev key made `requests`."""
    dev_key_id = up.api_key.removeprefix("lm-").split(".")[0]
    totals = [
        json.loads(line)
        for line in (await _llm_mesh(up, "usage", "--since", "24h", "--json")).splitlines()
    ]
    (dev,) = [total for total in totals if total["key_id"] == dev_key_id]
    assert dev["model"] == MODEL and dev["owner"] == "dev"
    assert (dev["requests"], dev["ok"]) == (requests, requests), dev
    assert dev["completion_tokens"] > 0
    table = await _llm_mesh(up, "usage", "--since", "24h")
    assert any(dev_key_id in line and MODEL in line for line in table.splitlines()), table


#: Placeholders of the README's command lines, and a value of the right type for each.
_PLACEHOLDERS = {
    "NAME": "name",
    "M": "model",
    "N": "1",
    "R": "r1",
    "KEY_ID": "0123",
    "DIR": "/tmp",
}


def _command_lines() -> list[list[str]]:
    """Every `llm-mesh …` and `docker compose run --rm admin …` command line of the README,
    from its code blocks and inline code, as `llm-mesh` arguments."""
    fenced = re.compile(r"^```\w*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    text = README.read_text()
    candidates = [line for block in fenced.findall(text) for line in block.splitlines()]
    # Inline code may wrap onto a second line.
    inline = re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", fenced.sub("", text))
    candidates += [" ".join(span.split()) for span in inline]
    commands = []
    for candidate in candidates:
        match = re.search(r"(?:^|\s|/)(?:llm-mesh|docker compose run --rm admin) (.+)$", candidate)
        if match is None or candidate.startswith("llm-mesh is up"):
            continue
        words = shlex.split(
            re.split(r"\s#|&&|`", match.group(1))[0].replace("[", " ").replace("]", " ")
        )
        commands.append([_PLACEHOLDERS.get(word, word) for word in words])
    return commands


def test_every_llm_mesh_command_of_the_readme_parses() -> None:
    parser = build_parser()
    commands = _command_lines()
    verbs = {words[0] for words in commands}
    assert {"up", "keys", "usage", "models", "settings"} <= verbs, verbs
    assert {words[1] for words in commands if words[0] == "models"} == {
        "push",
        "list",
        "pull",
        "rm",
    }
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"README: `llm-mesh {' '.join(words)}` is not a valid command")
