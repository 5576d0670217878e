"""Facts about the machine and the installed packages, each probed in one place: package versions, CPU
features, process memory, and the summary a benchmark records. Nothing here imports a heavy library."""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from retrieval.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "int8")


def package_version(name: str) -> str:
    """An installed distribution's version without importing it ("" when absent)."""
    from importlib import metadata  # here: importing it (email parsing and all) cost every cold query ~20 ms

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


@lru_cache(maxsize=1)
def cpu() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags, from /proc/cpuinfo (empty where there is none)."""
    name, flags = platform.processor() or "unknown", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, flags


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16); elsewhere bf16 is emulated and slow."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu()[1])


def resolve_precision(precision: str, native: bool) -> str:
    """`auto` becomes bf16 where the engine computes it natively, else fp32; the others stay."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if native else "fp32"
    return precision


def memory_bytes(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status: VmRSS now, VmHWM its peak. (Not getrusage:
    on Linux its ru_maxrss carries the parent's peak across fork and exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on, as its results record it: CPU, cores, native bf16, versions, date."""
    name, flags = cpu()
    names = ("faiss-cpu", "numpy", "openvino", "tensorflow-cpu", "tensorflow", "keras", "pillow", "typer")
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "bf16": sorted({"amx_bf16", "avx512_bf16"} & flags),
        "python": platform.python_version(),
        "versions": {n: version for n in names if (version := package_version(n))},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
