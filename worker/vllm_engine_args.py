"""How vLLM's engine is set up for a model on this machine: dtype, CPU threads, KV cache.

Part of the vLLM engine: only `worker.engine` imports this module (it imports vLLM).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform

__all__ = ["Dtype", "EngineOptions"]

Dtype = Literal["auto", "bfloat16", "float16", "float32"]

_GIB = 1 << 30


@dataclass(frozen=True)
class EngineOptions:
    """The construction options of `worker.engine.VllmEngine` (documented there)."""

    model_dir: Path
    served_name: str
    max_num_seqs: int
    max_model_len: int | None
    dtype: Dtype
    kv_cache_gib: float
    cpu_threads: str | None
    enforce_eager: bool
    seed: int

    def engine_args(self) -> AsyncEngineArgs:
        """vLLM's arguments for these options.

        Sets the process environment vLLM reads: `HF_HUB_OFFLINE` and, on CPUs,
        `VLLM_CPU_OMP_THREADS_BIND` (an operator's own binding stays unless `cpu_threads`
        is given).
        """
        dtype: str = self.dtype
        # HF_HUB_OFFLINE: the model is a local directory; never reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if current_platform.is_cpu():
            if dtype == "auto":
                dtype = "bfloat16" if _cpu_has_bf16() else "float32"
            # Without a binding vLLM's CPU backend leaves a core to the frontend, which on a
            # two-core machine halves the speed. An operator's own setting stays.
            if self.cpu_threads is not None:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_threads
            else:
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _allowed_cpus())
        args = AsyncEngineArgs(
            model=str(self.model_dir),
            tokenizer=str(self.model_dir),
            served_model_name=[self.served_name],
            dtype=dtype,  # type: ignore[arg-type]  # vLLM's ModelDType literal
            max_num_seqs=self.max_num_seqs,
            kv_cache_memory_bytes=int(self.kv_cache_gib * _GIB),
            enforce_eager=self.enforce_eager,
            seed=self.seed,
            disable_log_stats=True,
        )
        if self.max_model_len is not None:
            args.max_model_len = self.max_model_len
        return args


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); else float32 is
    faster than emulated bf16."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = {flag for line in cpuinfo if line.startswith("flags") for flag in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _allowed_cpus() -> str:
    """This process's CPU affinity in `VLLM_CPU_OMP_THREADS_BIND` form, e.g. "0-1" or "0,2-3"."""
    cpus = sorted(os.sched_getaffinity(0))
    ranges: list[str] = []
    start = previous = cpus[0]
    for cpu in [*cpus[1:], -1]:
        if cpu != previous + 1:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
            start = cpu
        previous = cpu
    return ",".join(ranges)
