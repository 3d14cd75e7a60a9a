"""Shared benchmark helpers: machine description, timing, JSON output."""

from __future__ import annotations

import os
import platform
import sys
import time

import jax


def machine() -> dict:
    """What ran the benchmark, so a number is never quoted without its machine."""
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "command": command(),
    }


def command() -> str:
    """The command line that ran this process, as it can be typed again: ``python -m
    benchmarks.step --sizes ...`` for a benchmark run as a module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name.removesuffix(".__main__")
        argv = ["-m", name, *sys.argv[1:]]
    else:
        argv = sys.argv
    return " ".join([os.path.basename(sys.executable), *argv])


def best_time(fn, *args, repeats: int = 5, min_time: float = 0.2) -> float:
    """Best wall time of ``fn(*args)`` (blocking on JAX results) over ``repeats`` runs,
    each run looping until it has taken at least ``min_time`` seconds."""
    best = float("inf")
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while True:
            jax.block_until_ready(fn(*args))
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = min(best, dt / n)
    return best
