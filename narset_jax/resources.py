"""Memory estimates, so that a size far beyond the machine is refused up front with the
estimate (one line) instead of ending in a traceback or an XLA abort.

The per-region figures are measured, not modelled: ``narset sweep`` reports XLA's own
account of a compiled closed-loop chunk (arguments, outputs, temporaries) at 340-590 bytes
per region in float32 (``benchmarks/results/sweep_cpu.json``, sizes 1e2 to 1e6); 640 is
used here, doubled for float64. Recorded decisions cost one value per column per window,
held about three times over (device, host columns, Parquet writer).
"""

from __future__ import annotations

import os

from narset_jax.errors import UserError

__all__ = [
    "BYTES_PER_REGION",
    "DECISION_COLUMNS_BYTES",
    "available_memory",
    "check_fits",
    "closed_loop_bytes",
    "format_bytes",
]

BYTES_PER_REGION = 640  # float32 closed loop, per copy of the state and its temporaries
DECISION_COLUMNS_BYTES = 64 * 3  # ~64 columns, each held about 3 times


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (``MemAvailable`` on Linux), or
    ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1 (e.g. ``3.2 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def closed_loop_bytes(n_regions: int, *, itemsize: int = 4, record_windows: int = 0,
                      copies: int = 1) -> int:
    """Estimated peak bytes of a closed loop over ``n_regions`` regions: the state and its
    temporaries (``copies`` of them, e.g. grid cells or seeds run at once) plus
    ``record_windows`` windows of decision records held for the log."""
    scale = itemsize / 4
    per_region = BYTES_PER_REGION * scale * copies + DECISION_COLUMNS_BYTES * scale * record_windows
    return int(n_regions * per_region)


def check_fits(needed: int, what: str, *, available: int | None = None) -> None:
    """Raise a one-line [`narset_jax.errors.UserError`][] if ``needed`` bytes exceed the
    memory available (``available``, default: [`available_memory`][]). ``what`` names the
    request, e.g. ``"--regions 1000000000000"``."""
    avail = available_memory() if available is None else available
    if avail is not None and needed > avail:
        raise UserError(
            f"{what}: needs about {format_bytes(needed)} of memory, more than the "
            f"{format_bytes(avail)} available here; use fewer regions (or more machines)"
        )
