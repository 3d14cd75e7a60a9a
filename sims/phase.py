"""Stability phase diagrams: closed-loop metrics over a 2-D grid of controller and scenario
parameters, computed as one jitted, ``vmap``ped program.

Each cell of the grid is a full closed-loop simulation ([`sims.rollout`][]): ``R`` regions
for ``T`` windows, repeated over ``S`` seeds. The cells differ only in the two swept
quantities; every other controller and scenario value is the base's. The grid is built as
stacked arrays of the swept ``NarsetParams`` / ``Scenario`` leaves, and one jitted function
``vmap``s the rollout over cells (outer) and seeds (inner). There is no Python loop over
cells: the grid is cut into a few equal chunks of rows, each of which is the same compiled
call (so a caller can show progress between chunks); ``chunks=1`` is a single call.

Axis names, the thrash indicator and how to read a diagram are documented in
``docs/phase.md``. This module does no I/O; the CLI (``narset phase``) and
``narset_jax.plots.phase`` write files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from sims.controllers import get_controller
from sims.ecologies import get_ecology
from sims.rollout import rollout

__all__ = [
    "AXES",
    "AXIS_NAMES",
    "CHUNK_REGIONS",
    "CHURN_REF",
    "EWMA_FIELDS",
    "FLAP_REF",
    "GAP_FLOOR",
    "METRICS",
    "Axis",
    "AxisInfo",
    "MetricInfo",
    "PhaseError",
    "PhaseGrid",
    "axis_coordinate",
    "axis_fields",
    "cell_values",
    "phase_grid",
    "thrash",
]


class PhaseError(UserError, ValueError):
    """A bad axis, range or grid setting (one line, naming the flag and what is wrong)."""


@dataclasses.dataclass(frozen=True)
class AxisInfo:
    """What a phase-diagram axis sweeps.

    **Fields:** ``name``; ``target`` (``"params"`` or ``"scenario"``); ``fields`` (the
    leaves it sets); ``label`` and ``unit`` (for plots); ``doc`` (one line).
    """

    name: str
    target: str
    fields: tuple[str, ...]
    label: str
    unit: str
    doc: str


# The stability EWMA rates: they smooth the signals whose instability index sets the repair
# need, so they are the rates that feed the hysteresis (and hence flapping) directly.
EWMA_FIELDS = ("rate_rollbacks", "rate_anomalies", "rate_nonfinite", "rate_lstm_health")
# A gap of 0 (one threshold) is run as this gap, because params require
# theta_exit < theta_enter; it is the same gap as the single-threshold baseline's.
GAP_FLOOR = 1e-4

AXES: dict[str, AxisInfo] = {
    a.name: a
    for a in (
        AxisInfo("alpha", "params", ("alpha",), "alpha (overdrive curvature)",
                 "cost per intensity^2", "curvature of the overdrive cost"),
        AxisInfo("beta", "params", ("beta",), "beta (inertia rate)", "per window",
                 "inertia on targets; 1 = none, small = slow"),
        AxisInfo("gap", "params", ("theta_enter", "theta_exit"),
                 "gap = theta_enter - theta_exit", "need (1 - S)",
                 "hysteresis gap; the midpoint of the thresholds stays at the base's"),
        AxisInfo("k", "params", ("k_enter", "k_exit"), "k = (k_enter + k_exit) / 2 (dwell)",
                 "windows", "mean dwell; k_exit - k_enter stays at the base's"),
        AxisInfo("ewma", "params", EWMA_FIELDS, "stability EWMA rate", "per window",
                 "rate_rollbacks, rate_anomalies, rate_nonfinite and rate_lstm_health"),
        AxisInfo("pool", "params", ("pool",), "pool B (budget per region)",
                 "cost units per window", "per-region budget"),
        AxisInfo("noise", "scenario", ("noise",), "telemetry noise",
                 "relative s.d.", "the scenario's relative noise on readings"),
        AxisInfo("shock_rate", "scenario", ("shock_rate",), "shock rate",
                 "hits per region per window", "the scenario's shock probability"),
        AxisInfo("spoofer_fraction", "scenario", ("spoofer_fraction",), "spoofer fraction",
                 "share of regions", "the share of regions that fake spikes"),
        AxisInfo("attack_budget", "scenario", ("spoof_size",), "attack budget (naive spoofers)",
                 "fake units per spoofer per window",
                 "the naive spoofers' spend (docs/gaslighting.md): spike size at fixed rate"),
    )
}
# A naive spike of spoof_size 1 costs this many attack units (1 rollback, 4 anomalies, LSTM
# health 12: sims.attack.NAIVE_SPIKE_UNITS), at the rate r / (1 + r) of spikes that never
# come two in a row (r = spoof_rate).
_NAIVE_SPIKE_UNITS = 3.0


def _naive_rate(scenario) -> float:
    r = float(scenario.spoof_rate)
    if not r > 0:
        raise PhaseError("axis attack_budget needs a scenario with spoof_rate > 0")
    return _NAIVE_SPIKE_UNITS * r / (1 + r)


AXIS_NAMES = tuple(AXES)


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """A per-cell metric: ``name``, plot ``label`` and ``unit``."""

    name: str
    label: str
    unit: str


METRIC_INFO: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("thrash", "thrash indicator", "1 = boundary"),
        MetricInfo("flap_rate", "flap rate", "mode switches / region / 100 windows"),
        MetricInfo("budget_churn", "budget churn", "|dx_T| + |dx_E| / region / 100 windows"),
        MetricInfo("progress", "progress", "share of reducible loss closed"),
        MetricInfo("overdrive_fraction", "overdrive fraction", "share of region-windows"),
        MetricInfo("unsafe_lysis", "unsafe lysis", "per region / 100 windows"),
        MetricInfo("spoofer_capture", "spoofer capture", "spend share above fair share"),
        MetricInfo("rollbacks", "rollbacks", "per region / 100 windows"),
    )
}
METRICS = tuple(METRIC_INFO)
# Metrics read from the rollout (thrash is derived from two of them).
_RAW = tuple(m for m in METRICS if m != "thrash")

# Default bound on the regions one chunk simulates (cells x seeds x regions): about 2 GB of
# float32 state and temporaries on CPU.
CHUNK_REGIONS = 2**21

# The thrash indicator's reference levels (docs/phase.md, "The thrash indicator").
FLAP_REF = 5.0
CHURN_REF = 10.0


def thrash(flap_rate, budget_churn, *, flap_ref: float = FLAP_REF, churn_ref: float = CHURN_REF):
    """The thrash indicator of a run: ``(flap_rate / flap_ref + budget_churn / churn_ref) / 2``.

    Both metrics are per region per 100 windows. With the default references (5 mode
    switches and 10 units of intensity change per 100 windows) a value of 1 is the thrash
    boundary; the reasons for these levels are in ``docs/phase.md``.
    """
    return 0.5 * (flap_rate / flap_ref + budget_churn / churn_ref)


# ---------------------------------------------------------------------------------------
# Axes.


def _num(text: str) -> float:
    return float(text)


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis of a phase diagram: ``n`` evenly spaced values from ``lo`` to ``hi``.

    **Fields:** ``name`` (one of [`sims.phase.AXIS_NAMES`][]), ``lo < hi`` (finite),
    ``n >= 2`` (the resolution). Validated on construction with a one-line
    [`sims.phase.PhaseError`][].
    """

    name: str
    lo: float
    hi: float
    n: int

    def __post_init__(self):
        if self.name not in AXES:
            raise PhaseError(
                f"unknown axis {self.name!r}; valid axes: {', '.join(AXIS_NAMES)}"
            )
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 2:
            raise PhaseError(f"axis {self.name}: resolution must be an int >= 2, got {self.n!r}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise PhaseError(f"axis {self.name}: lo and hi must be finite numbers")
        if not self.lo < self.hi:
            raise PhaseError(
                f"axis {self.name}: lo must be < hi, got lo={self.lo:g} and hi={self.hi:g}"
            )

    @classmethod
    def parse(cls, text: str) -> Axis:
        """Parse ``NAME:LO:HI:N``, e.g. ``beta:0.02:1:40``."""
        parts = str(text).split(":")
        if len(parts) != 4:
            name = parts[0] if parts and parts[0] in AXES else "beta"
            raise PhaseError(
                f"axis {text!r}: expected NAME:LO:HI:N (e.g. {name}:0.1:1:40); "
                f"valid names: {', '.join(AXIS_NAMES)}"
            )
        name, lo, hi, n = (p.strip() for p in parts)
        if name not in AXES:
            raise PhaseError(f"unknown axis {name!r}; valid axes: {', '.join(AXIS_NAMES)}")
        try:
            lo_f, hi_f = _num(lo), _num(hi)
        except ValueError:
            raise PhaseError(f"axis {text!r}: LO and HI must be numbers") from None
        try:
            n_i = int(n)
        except ValueError:
            raise PhaseError(
                f"axis {text!r}: resolution N must be an int >= 2, got {n!r}"
            ) from None
        return cls(name, lo_f, hi_f, n_i)

    def __str__(self) -> str:
        return f"{self.name}:{self.lo:g}:{self.hi:g}:{self.n}"

    @property
    def info(self) -> AxisInfo:
        return AXES[self.name]

    @property
    def values(self) -> np.ndarray:
        """The ``n`` axis values (float64)."""
        return np.linspace(self.lo, self.hi, self.n)

    def to_dict(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": self.name,
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "values": self.values.tolist(),
            "label": info.label,
            "unit": info.unit,
            "fields": list(info.fields),
            "target": info.target,
        }


def axis_fields(name: str, values, params: NarsetParams, scenario) -> dict[str, np.ndarray]:
    """The leaf values an axis sets, for axis values ``values`` around a base.

    - ``gap``: ``theta_enter = m + g/2``, ``theta_exit = m - g/2``, with ``m`` the base's
      midpoint and ``g = max(gap, GAP_FLOOR)``; needs ``theta_exit >= 0`` and
      ``theta_enter <= 1``.
    - ``k``: ``k_enter = k - d/2``, ``k_exit = k + d/2`` with ``d = k_exit - k_enter`` of the
      base; needs ``k_enter >= 1``.
    - ``ewma``: every field of [`sims.phase.EWMA_FIELDS`][] set to the value.
    - ``attack_budget``: ``spoof_size = b (1 + r) / (3 r)`` (``r = spoof_rate``), so that
      the naive spoofers spend ``b`` attack units per window; needs ``spoof_rate > 0``.
    - the others: the field of the same name.

    **Returns:** ``field -> float64 array`` shaped like ``values``.

    **Raises:** [`sims.phase.PhaseError`][] naming the value that breaks a rule above.
    Per-field ranges are checked later, when the grid's params are built.
    """
    v = np.asarray(values, dtype=np.float64)
    if name == "gap":
        enter, exit_ = float(params.theta_enter), float(params.theta_exit)
        mid = 0.5 * (enter + exit_)
        if np.any(v < 0):
            raise PhaseError(f"axis gap: gap must be >= 0, got {v.min():g}")
        limit = 2 * min(mid, 1 - mid)
        if np.any(v > limit + 1e-12):
            raise PhaseError(
                f"axis gap: gap={v.max():g} puts theta_exit < 0 or theta_enter > 1 (the "
                f"thresholds keep their midpoint {mid:g}); use gap <= {limit:g}"
            )
        g = np.maximum(v, GAP_FLOOR)
        return {
            "theta_enter": np.minimum(mid + g / 2, 1.0),
            "theta_exit": np.maximum(mid - g / 2, 0.0),
        }
    if name == "k":
        d = float(params.k_exit) - float(params.k_enter)
        lowest = 1 + d / 2 if d >= 0 else 1 - d / 2
        if np.any(v < lowest - 1e-12):
            raise PhaseError(
                f"axis k: k={v.min():g} makes a dwell < 1 window (k is the mean of k_enter and "
                f"k_exit, whose difference {d:g} stays at the base's); use k >= {lowest:g}"
            )
        return {"k_enter": v - d / 2, "k_exit": v + d / 2}
    if name == "attack_budget":
        return {"spoof_size": v / _naive_rate(scenario)}
    return {f: v for f in AXES[name].fields}


def axis_coordinate(name: str, params: NarsetParams, scenario) -> float:
    """Where ``params`` (and ``scenario``) sit on an axis: the inverse of
    [`sims.phase.axis_fields`][]. For ``ewma`` the mean of the four rates."""
    if name == "gap":
        return _plain(params.theta_enter) - _plain(params.theta_exit)
    if name == "k":
        return 0.5 * (_plain(params.k_enter) + _plain(params.k_exit))
    if name == "attack_budget":
        return _plain(scenario.spoof_size) * _naive_rate(scenario)
    info = AXES[name]
    src = params if info.target == "params" else scenario
    return float(np.mean([_plain(getattr(src, f)) for f in info.fields]))


def _plain(value) -> float:
    """A scalar leaf as the Python float it was written as (a float32 0.3 gives 0.3)."""
    # ``str`` of a numpy scalar is its shortest round-tripping repr in its own dtype.
    return float(str(np.asarray(value).reshape(())[()]))


def cell_values(x: Axis, y: Axis, params: NarsetParams, scenario):
    """The swept leaves of every cell, flattened row-major (``y`` outer, ``x`` inner).

    **Returns:** ``(param_values, scenario_values)``, each ``field -> float64 [ny * nx]``.

    **Raises:** [`sims.phase.PhaseError`][] when the axes clash or a value is outside
    its field's range (the message names the axis and the field's allowed range).
    """
    if x.name == y.name:
        raise PhaseError(f"x and y must be different axes, both are {x.name!r}")
    gx, gy = np.meshgrid(x.values, y.values)
    out = {"params": {}, "scenario": {}}
    for axis, grid in ((x, gx), (y, gy)):
        fields = axis_fields(axis.name, grid.reshape(-1), params, scenario)
        out[axis.info.target].update(fields)
    # Build the stacked params and scenario once, concretely: their own validation checks
    # every cell's values (ranges and cross-field order).
    for axis in (x, y):
        target = params if axis.info.target == "params" else scenario
        vals = out[axis.info.target]
        try:
            target.replace(**{k: jnp.asarray(v) for k, v in vals.items()})
        except ValueError as err:
            raise PhaseError(f"axis {axis}: {err}") from None
    return out["params"], out["scenario"]


# ---------------------------------------------------------------------------------------
# The grid.


def _substitute(module, values: Mapping[str, jax.Array]):
    if not values:
        return module
    names = tuple(values)
    return eqx.tree_at(
        lambda m: tuple(getattr(m, n) for n in names), module, tuple(values[n] for n in names)
    )


@partial(jax.jit, static_argnames=("n_regions", "n_steps", "controller", "ecology", "dtype"))
def _grid_chunk(params, scenario, pvals, svals, keys, *, n_regions, n_steps, controller, ecology,
                dtype):
    """Metrics ``name -> [cells, seeds]`` for a chunk of cells: vmap over cells, then over
    seeds, of one closed-loop rollout."""

    def cell(pv, sv):
        p = _substitute(params, pv)
        s = _substitute(scenario, sv)

        def one(key):
            m = rollout(p, s, key, n_regions, n_steps, controller=controller, ecology=ecology,
                        dtype=dtype)
            return {name: getattr(m.metrics, name) for name in _RAW}

        return jax.vmap(one)(keys)

    return jax.vmap(cell)(pvals, svals)


# Compiled chunk programs, by argument structure, shapes, dtypes and static settings, so
# that repeated grids of the same shape (a notebook, a test) compile once. Small: each
# entry holds one executable.
_COMPILED: dict[Any, Any] = {}
_COMPILED_MAX = 4


def _compiled_chunk(args, static):
    leaves, treedef = jax.tree.flatten(args)
    key = (
        treedef,
        tuple((x.shape, str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves),
        tuple(sorted(static.items())),
    )
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = _grid_chunk.lower(*args, **static).compile()
    return _COMPILED[key]


@dataclasses.dataclass
class PhaseGrid:
    """The result of [`sims.phase.phase_grid`][].

    **Fields:**

    - ``x``, ``y``: the [`sims.phase.Axis`][] of each direction.
    - ``samples``: ``metric -> [ny, nx, S]`` float64, per seed (``thrash`` included).
    - ``mean``, ``std``: ``metric -> [ny, nx]``: mean and sample standard deviation
      (``ddof=1``; 0 when ``S = 1``) over seeds.
    - ``config``: the run's settings (regions, steps, seeds, seed, controller, dtype, chunks,
      thrash references, base params and scenario as plain values).
    - ``compile_s``, ``run_s``: seconds spent compiling (0 when a grid of the same shape
      was compiled before in this process) and running.
    """

    x: Axis
    y: Axis
    samples: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    config: dict[str, Any]
    compile_s: float
    run_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready; non-finite numbers become ``None``)."""
        return {
            "x": self.x.to_dict(),
            "y": self.y.to_dict(),
            "config": self.config,
            "metrics": {
                name: {
                    "label": METRIC_INFO[name].label,
                    "unit": METRIC_INFO[name].unit,
                    "mean": _json_array(self.mean[name]),
                    "std": _json_array(self.std[name]),
                }
                for name in METRICS
            },
            "timing": {"compile_s": self.compile_s, "run_s": self.run_s},
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per cell (``ix``, ``iy``, the two axis values, then
        ``<metric>_mean`` and ``<metric>_std``), row-major."""
        xs, ys = self.x.values, self.y.values
        out = []
        for iy in range(self.y.n):
            for ix in range(self.x.n):
                row: dict[str, Any] = {"ix": ix, "iy": iy, self.x.name: float(xs[ix]),
                                       self.y.name: float(ys[iy])}
                for name in METRICS:
                    row[f"{name}_mean"] = float(self.mean[name][iy, ix])
                    row[f"{name}_std"] = float(self.std[name][iy, ix])
                out.append(row)
        return out


def _json_array(a: np.ndarray):
    return [[float(v) if math.isfinite(v) else None for v in row] for row in np.asarray(a)]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PhaseError(f"{name} must be a positive int, got {value!r}")
    return value


def phase_grid(
    x: Axis,
    y: Axis,
    *,
    scenario,
    params: NarsetParams | None = None,
    n_regions: int,
    n_steps: int,
    n_seeds: int,
    seed: int = 0,
    controller="narset",
    ecology=None,
    dtype=jnp.float32,
    chunks: int | None = None,
    flap_ref: float = FLAP_REF,
    churn_ref: float = CHURN_REF,
    on_progress: Callable[[int, int], None] | None = None,
) -> PhaseGrid:
    """Run the closed loop on every cell of an ``x`` by ``y`` grid.

    **Arguments:**

    - ``x``, ``y``: the two [`sims.phase.Axis`][] (different names).
    - ``scenario``: a [`sims.Scenario`][] (the base for scenario axes).
    - ``params``: base [`narset_jax.NarsetParams`][] (default: the defaults).
    - ``n_regions``, ``n_steps``, ``n_seeds``: ``R``, ``T`` and ``S`` per cell.
    - ``seed``: the base PRNG seed. Every cell uses the same ``S`` keys (common random
      numbers), so differences between cells come from the swept values, not the draws.
    - ``controller``: a [`sims.Controller`][] or one of [`sims.CONTROLLERS`][].
    - ``ecology``: an [`sims.Ecology`][] or its name (default: the stylised ecology);
      ``scenario`` is its params.
    - ``dtype``: the rollout dtype (``jnp.float32`` or ``jnp.float64``).
    - ``chunks``: how many equal chunks of rows to run (the same compiled call each; the
      last chunk is padded). ``1`` runs the whole grid as one call. ``None`` (default):
      ``min(ny, 8)`` chunks, or more (up to one row per chunk) so that a chunk simulates at
      most ``CHUNK_REGIONS`` regions (cells x seeds x regions), which bounds memory.
    - ``flap_ref``, ``churn_ref``: the thrash indicator's references.
    - ``on_progress``: called as ``on_progress(done_cells, total_cells)`` once compilation is
      over (``done_cells = 0``) and after each chunk.

    **Returns:** a [`sims.phase.PhaseGrid`][].
    """
    params = NarsetParams() if params is None else params
    _positive_int("regions", n_regions)
    _positive_int("steps", n_steps)
    _positive_int("seeds", n_seeds)
    if chunks is None:
        per_row = x.n * n_seeds * n_regions
        chunks = min(y.n, max(8, -(-y.n * per_row // CHUNK_REGIONS)))
    _positive_int("chunks", chunks)
    try:
        ctl, eco = get_controller(controller), get_ecology(ecology)
    except ValueError as err:
        raise PhaseError(str(err)) from None
    if not (flap_ref > 0 and churn_ref > 0):
        raise PhaseError("flap_ref and churn_ref must be > 0")
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise PhaseError(f"dtype must be float32 or float64, got {dtype}")
    pv, sv = cell_values(x, y, params, scenario)
    base_s = eco.prepare(scenario)
    nx, ny = x.n, y.n
    total = nx * ny
    rows_per = -(-ny // min(chunks, ny))
    n_chunks = -(-ny // rows_per)
    size = rows_per * nx

    def take(vals, start):
        idx = np.minimum(np.arange(start, start + size), total - 1)  # pad with the last cell
        return {k: jnp.asarray(v[idx], dtype) for k, v in vals.items()}

    keys = jax.random.split(jax.random.key(seed), n_seeds)
    static = dict(n_regions=n_regions, n_steps=n_steps, controller=ctl, ecology=eco,
                  dtype=dtype.type)
    t0 = time.perf_counter()
    compiled = _compiled_chunk((params, base_s, take(pv, 0), take(sv, 0), keys), static)
    compile_s = time.perf_counter() - t0
    if on_progress is not None:
        on_progress(0, total)
    t0 = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _RAW}
    for c in range(n_chunks):
        start = c * size
        out = compiled(params, base_s, take(pv, start), take(sv, start), keys)
        out = jax.device_get(out)
        n_real = min(size, total - start)
        for name in _RAW:
            parts[name].append(np.asarray(out[name], np.float64)[:n_real])
        if on_progress is not None:
            on_progress(start + n_real, total)
    run_s = time.perf_counter() - t0
    samples = {name: np.concatenate(parts[name]).reshape(ny, nx, n_seeds) for name in _RAW}
    samples["thrash"] = thrash(
        samples["flap_rate"], samples["budget_churn"], flap_ref=flap_ref, churn_ref=churn_ref
    )
    samples = {name: samples[name] for name in METRICS}
    mean = {k: v.mean(axis=-1) for k, v in samples.items()}
    std = {
        k: (v.std(axis=-1, ddof=1) if n_seeds > 1 else np.zeros_like(v[..., 0]))
        for k, v in samples.items()
    }
    config = {
        "regions": n_regions,
        "steps": n_steps,
        "seeds": n_seeds,
        "seed": seed,
        "controller": ctl.name,
        "dtype": dtype.name,
        "chunks": n_chunks,
        "thrash": {
            "definition": "(flap_rate / flap_ref + budget_churn / churn_ref) / 2",
            "flap_ref": flap_ref,
            "churn_ref": churn_ref,
        },
        "gap_floor": GAP_FLOOR,
        "scenario": scenario.to_dict(),
        "params": params.to_dict(),
    }
    return PhaseGrid(x, y, samples, mean, std, config, compile_s, run_s)
