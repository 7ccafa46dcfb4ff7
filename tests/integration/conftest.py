"""What the integration suites share: the session's real vLLM worker and the model cache.

At most one real vLLM engine runs at any moment of a session (DESIGN.md, "Tests on a 2-core
machine"). There are two kinds:

- `vllm_worker` (session scope): THE `llm-mesh worker --engine vllm --model smollm2-135m` of
  the session, under its own broker prefix (`vllm_worker.prefix`: schedulers and gateways that
  want the real model join that prefix). It starts lazily, when the first test that needs it
  is set up, and stops at the end of the session (process group stopped, nothing left behind,
  the prefix's broker objects deleted). Tests that use it get the `vllm` marker.
- Tests marked `vllm` that do not use `vllm_worker` bring their own engine: the in-process
  engines of `worker/test_vllm_engine.py` and of `tests/quality/`, a worker pulling the model
  from S3 in `storage/`, `llm-mesh up`'s worker in `deploy/test_quickstart.py`, the worker
  whose engine core `observability/test_vllm_watchdog.py` freezes.
  `pytest_collection_modifyitems` (pytest hands it every item of the session, not only this
  directory's) runs their directories before every other test, so their engines are closed
  (by their tests, at the latest by their module's or package's teardown) before anything can
  start the shared worker. A module must not mix the two kinds.

The shared worker and the in-process engine check, just before they start, that no vLLM
engine process descends from this session (`bench.process_mesh.assert_no_vllm_engine`): should an
ordering change ever make two overlap, the run fails instead of overloading the machine.

The converted model lives in pytest's cache directory (`.pytest_cache/d/llm-mesh-data`,
ignored by git): the ~20 s conversion runs once per checkout, and once per CI run in a fresh
clone. With `-p no:cacheprovider` it is a temporary directory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from broker_inspector import BrokerInspector
from shared_worker import SharedWorker

from bench.process_mesh import assert_no_vllm_engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    own_engine: set[str] = set()
    for item in items:
        if "vllm_worker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vllm)
        elif item.get_closest_marker("vllm") is not None:
            own_engine.add(_directory_of(item))
    # A stable partition by directory: a package-scoped engine (tests/quality) is torn down
    # only once every test of its package has run, so its whole directory moves together.
    items[:] = sorted(items, key=lambda item: _directory_of(item) not in own_engine)


def _directory_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0].rsplit("/", 1)[0]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def broker() -> AsyncIterator[BrokerInspector]:
    """A random broker prefix for the module (`test-<8 hex>.`); everything under it is deleted
    (and checked gone) at the end."""
    inspector = BrokerInspector(f"test-{uuid.uuid4().hex[:8]}.")
    yield inspector
    await inspector.delete_everything()
    assert await inspector.names() == (set(), set())


@pytest.fixture(scope="session")
def model_data_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`LLM_MESH_DATA_DIR` of the real engines: the converted model is cached in it."""
    cache: pytest.Cache | None = getattr(pytestconfig, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("llm-mesh-data")
    return Path(cache.mkdir("llm-mesh-data"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_worker(
    model_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SharedWorker]:
    """The session's real vLLM worker (see the module docstring)."""
    assert_no_vllm_engine("the shared vLLM worker")
    worker = await SharedWorker.start(
        f"test-{uuid.uuid4().hex[:8]}.",
        model_data_dir,
        tmp_path_factory.mktemp("vllm-worker") / "worker.log",
    )
    try:
        yield worker
    finally:
        try:
            await worker.stop()
        finally:
            await worker.delete_broker_objects()
