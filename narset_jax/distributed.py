"""Devices and processes for the CLI: ``--devices``, and multi-process runs through
``jax.distributed`` (gloo collectives on CPU).

Nothing here is a distribution layer of its own. It only sets JAX's own configuration before
the backend starts, calls ``jax.distributed.initialize``, and picks the devices that
[`narset_jax.sharding.region_mesh`][] lays regions over. See ``docs/scaling.md``.

```python
parser = argparse.ArgumentParser()
add_device_args(parser)
args = parser.parse_args()
devices = setup_devices(args)        # before any other JAX call
mesh = region_mesh(devices)
```
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from narset_jax.errors import UserError

__all__ = [
    "DeviceError",
    "DeviceSetup",
    "add_device_args",
    "env_for_host_devices",
    "initialize",
    "parse_device_counts",
    "pick_devices",
    "setup_devices",
]


class DeviceError(UserError, ValueError):
    """Bad ``--devices`` or multi-process flags, or too few devices (one line)."""


@dataclass(frozen=True)
class DeviceSetup:
    """What [`narset_jax.distributed.setup_devices`][] chose.

    **Fields:**

    - ``devices``: the devices to shard over, all processes included, ordered by process
      and then by local id (the mesh order).
    - ``device_counts``: for ``--devices 1,2,4`` (a sweep's device axis), each count; the
      mesh for count ``d`` uses the first ``d`` of ``local_devices`` on every process.
    - ``process_id``, ``num_processes``: this process and how many there are.
    """

    devices: tuple
    device_counts: tuple[int, ...]
    process_id: int
    num_processes: int

    @property
    def is_main(self) -> bool:
        """Process 0: the one that prints and writes files."""
        return self.process_id == 0


def parse_device_counts(text: str | int | None) -> tuple[int, ...]:
    """``"4"`` -> ``(4,)``; ``"1,2,4"`` -> ``(1, 2, 4)``; ``None`` -> ``(1,)``."""
    if text is None:
        return (1,)
    if isinstance(text, int) and not isinstance(text, bool):
        counts = [text]
    else:
        try:
            counts = [int(part) for part in str(text).split(",") if part.strip()]
        except ValueError:
            raise DeviceError(
                f"--devices must be a positive integer or a comma list, got {text!r}"
            ) from None
    if not counts or any(c <= 0 for c in counts):
        raise DeviceError(f"--devices must be positive, got {text!r}")
    return tuple(sorted(set(counts)))


def add_device_args(parser: argparse.ArgumentParser, *, allow_list: bool = False) -> None:
    """Add ``--devices``, ``--coordinator``, ``--num-processes`` and ``--process-id``.

    **Arguments:**

    - ``parser``: the subcommand's parser.
    - ``allow_list``: accept ``--devices 1,2,4`` (a device-count axis, for sweeps).
    """
    group = parser.add_argument_group("devices and processes (docs/scaling.md)")
    what = "D or a comma list D1,D2,..." if allow_list else "D"
    group.add_argument(
        "--devices",
        default=None,
        metavar="D" if not allow_list else "D[,D...]",
        help=f"shard regions over {what} local devices per process (default 1). On CPU "
        "this many host devices are created.",
    )
    group.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-process run: address of process 0's coordinator (jax.distributed)",
    )
    group.add_argument(
        "--num-processes", type=int, default=None, metavar="P", help="processes in the run"
    )
    group.add_argument(
        "--process-id", type=int, default=None, metavar="I", help="this process, 0..P-1"
    )
    parser.set_defaults(_device_list=allow_list)


def _check_process_args(coordinator, num_processes, process_id) -> None:
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise DeviceError("--coordinator, --num-processes and --process-id go together")
    if not any(given):
        return
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1:
        raise DeviceError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise DeviceError(
            f"--process-id must be in [0, {num_processes - 1}], got {process_id}"
        )


def initialize(
    coordinator: str,
    num_processes: int,
    process_id: int,
    *,
    local_devices: int | None = None,
    timeout_s: int = 120,
) -> None:
    """Join a multi-process run with ``jax.distributed.initialize``.

    Must run before any JAX computation. On CPU it selects gloo collectives
    (``jax_cpu_collectives_implementation``) so that cross-process reductions work, and
    creates ``local_devices`` host devices in this process.
    """
    import jax

    _check_process_args(coordinator, num_processes, process_id)
    _configure_cpu(local_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - older or newer JAX
        return False


def _forced_host_devices() -> int | None:
    """The host device count that ``XLA_FLAGS`` forces, if it does."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        name, _, value = flag.partition("=")
        if name.lstrip("-") == "xla_force_host_platform_device_count" and value.isdigit():
            return int(value)
    return None


def _configure_cpu(n: int | None) -> None:
    """Ask for ``n`` host CPU devices, if the backend has not started yet and ``XLA_FLAGS``
    does not already choose a count (``jax_num_cpu_devices`` would override it, and a
    test session that forces 4 devices must keep them for every test)."""
    import jax

    if n is None or _backends_started() or _forced_host_devices() is not None:
        return
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:  # pragma: no cover - backend started between the check and here
        pass


def setup_devices(args: argparse.Namespace) -> DeviceSetup:
    """Apply ``--devices`` and the multi-process flags. Call before any JAX computation.

    - Multi-process flags present: ``jax.distributed.initialize`` with gloo on CPU.
    - On CPU, ``max(--devices)`` host devices are created per process (when the backend has
      not started yet and ``XLA_FLAGS=--xla_force_host_platform_device_count`` does not
      choose a count; otherwise the devices already there must suffice, as in tests).

    **Returns:** a [`narset_jax.distributed.DeviceSetup`][].

    **Raises:** [`narset_jax.distributed.DeviceError`][] for bad flags or too few devices.
    """
    allow_list = getattr(args, "_device_list", False)
    counts = parse_device_counts(getattr(args, "devices", None))
    if len(counts) > 1 and not allow_list:
        raise DeviceError(f"--devices takes one count here, got {args.devices!r}")
    coordinator = getattr(args, "coordinator", None)
    num_processes = getattr(args, "num_processes", None)
    process_id = getattr(args, "process_id", None)
    _check_process_args(coordinator, num_processes, process_id)
    need = max(counts)
    if coordinator is not None:
        initialize(coordinator, num_processes, process_id, local_devices=need)
    else:
        _configure_cpu(need if need > 1 else None)

    import jax

    local = jax.local_devices()
    if len(local) < need:
        hint = ""
        if jax.default_backend() == "cpu":
            why = (
                "XLA_FLAGS chooses the host device count"
                if _forced_host_devices() is not None
                else "the CPU backend had already started"
            )
            hint = f" ({why}; set XLA_FLAGS=--xla_force_host_platform_device_count={need})"
        raise DeviceError(
            f"--devices {need} needs {need} local devices, found {len(local)}{hint}"
        )
    return DeviceSetup(
        devices=tuple(pick_devices(need)),
        device_counts=counts,
        process_id=jax.process_index(),
        num_processes=jax.process_count(),
    )


def pick_devices(per_process: int) -> list:
    """The first ``per_process`` local devices of every process, in process order."""
    import jax

    by_proc: dict[int, list] = {}
    for d in jax.devices():
        by_proc.setdefault(d.process_index, []).append(d)
    out = []
    for proc in sorted(by_proc):
        devs = sorted(by_proc[proc], key=lambda d: d.id)
        if len(devs) < per_process:
            raise DeviceError(
                f"process {proc} has {len(devs)} devices, fewer than --devices {per_process}"
            )
        out.extend(devs[:per_process])
    return out


def env_for_host_devices(n: int, env: Sequence[tuple[str, str]] | None = None) -> dict:
    """A copy of the environment that gives a new Python process ``n`` host CPU devices
    (for launching workers; see ``tests/test_multiprocess.py``)."""
    out = dict(os.environ if env is None else env)
    flags = [f for f in out.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={n}")
    out["XLA_FLAGS"] = " ".join(flags)
    return out
