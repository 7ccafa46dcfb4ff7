"""llm-mesh worker: consumes one model's task queue into an inference engine."""

from worker.service import WorkerService, build_engine, main, serve
from worker.settings import Settings
from worker.synthetic import SyntheticEngine

__all__ = ["Settings", "SyntheticEngine", "WorkerService", "build_engine", "main", "serve"]
