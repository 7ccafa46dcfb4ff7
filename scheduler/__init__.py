"""llm-mesh scheduler: the `SchedulerService` gRPC API in front of the worker pool."""

from scheduler.server import SchedulerServer, main, serve
from scheduler.settings import Settings

__all__ = ["SchedulerServer", "Settings", "main", "serve"]
