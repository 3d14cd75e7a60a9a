"""The simulate engine: run a controller on an ecology, window by window, and write the
decision log, the summary and the figures. ``narset simulate`` is its command line.

The controller runs as its own jitted step, window by window, exactly as replay runs it;
the ecology runs as a second jitted step. (Fused into one program, XLA may contract
multiply-adds differently and change the last bit of a decision.) Log parts are written
every ``chunk`` windows, so memory stays flat.

With several devices the regions are sharded over them (and, with ``jax.distributed``,
over every process's devices; process 0 writes the files). The decisions, the log and the
summary are bitwise those of a one-device run, for every budget mode, so ``narset replay``
verifies a sharded run's log as it does any other:

- per-region pools (``region``, ``fixed_sum``): both steps run sharded
  (``ShardedRollout.controller_step`` and ``.advance``, under ``shard_map``), and are the
  same programs, block by block, as the one-device steps;
- the global pool: its multiplier is a sum over every region, and a sum split over devices
  rounds differently from replay's one-device sum. So each window the telemetry (which the
  log holds anyway) is gathered and the controller runs as replay's own jitted step, on
  all regions, on one device of each process; the decisions are sharded back for the
  ecology, which stays sharded. See ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.atomic import write_json
from narset_jax.decision_log import DecisionLogWriter, jitted_step, write_truth
from narset_jax.sharding import region_mesh
from sims.baselines import step_fn
from sims.controllers import Controller, get_controller
from sims.ecologies import Ecology, get_ecology
from sims.metrics import DEFAULT_WEIGHTS, objective
from sims.rollout import advance, rollout_init, rollout_metrics
from sims.sharding import rollout_runner

__all__ = [
    "MAX_CHUNK", "ROWS_PER_PART", "check_memory", "default_chunk", "resolve_params", "simulate",
]

ROWS_PER_PART = 1_000_000
MAX_CHUNK = 64


def default_chunk(n_regions: int, n_steps: int, chunk: int | None = None) -> int:
    """Windows per log part: ``chunk`` if given (at most ``n_steps``), else about
    ``ROWS_PER_PART`` rows per part (at most ``MAX_CHUNK`` windows), evened out."""
    if chunk is None:
        chunk = max(1, min(MAX_CHUNK, ROWS_PER_PART // n_regions))
        parts = math.ceil(n_steps / chunk)
        chunk = math.ceil(n_steps / parts)
    return min(chunk, n_steps)


def resolve_params(params_file: str | None, scenario, budget: str | None):
    """Params from the file (or defaults), with the budget mode from ``--budget``, else
    the file, else the scenario's recommendation (``scenario.recommended_params``: any
    ecology's params)."""
    import tomllib

    from narset_jax.params import NarsetParams

    if params_file:
        params = NarsetParams.from_toml(params_file)
        with open(params_file, "rb") as fh:
            in_file = "budget" in tomllib.load(fh)
    else:
        params, in_file = NarsetParams(), False
    if budget is not None:
        return params.replace(budget=budget)
    if not in_file:
        return scenario.recommended_params(params)
    return params


def check_memory(n_regions: int, dtype: str, chunk: int, n_processes: int = 1) -> None:
    """Refuse, in one line with the estimate, a size whose closed loop cannot fit in this
    machine's memory (before anything is allocated): each process holds its share of the
    regions, and process 0 a chunk of every region's decision records."""
    from narset_jax.resources import check_fits, closed_loop_bytes

    itemsize = np.dtype(dtype).itemsize
    share = -(-n_regions // max(n_processes, 1))
    need = closed_loop_bytes(share, itemsize=itemsize) + closed_loop_bytes(
        n_regions, itemsize=itemsize, record_windows=chunk, copies=0)
    check_fits(need, f"--regions {n_regions}")


def simulate(
    params,
    scenario,
    *,
    n_regions: int,
    n_steps: int,
    seed: int,
    out: Path,
    controller: Controller | str = "narset",
    ecology: Ecology | str | None = None,
    dtype: str = "float32",
    chunk: int = 64,
    sample_regions: int = 6,
    plots: bool = True,
    progress: bool = True,
    params_file: str | None = None,
    setup=None,
    force: bool = False,
    sign_key: bytes | None = None,
) -> dict:
    """Run the simulation, writing the log, summary and plots to ``out``; returns the
    summary. After the manifest, ``out/ground_truth.arrow`` records which regions spoof
    (the ecology's ``Outcome.spoofer``; [`narset_jax.decision_log.write_truth`][]), for
    ``narset audit``.

    The output is a transaction ([`narset_jax.decision_log.OutputDir`][]): ``out`` is
    locked for the run (a second writer is refused), everything is written into a staging
    directory beside it, and the finished output replaces the old one at the end. An
    exception (``KeyboardInterrupt`` included) keeps an old log in ``out``; without one,
    the partial log (every window simulated so far) becomes ``out``. ``out`` holding files
    that are not a narset output is refused unless ``force``. ``sign_key``: HMAC-sign the
    manifest. A size that cannot fit in memory is refused first
    ([`check_memory`][sims.simulate.check_memory]).

    Figures that cannot be drawn or written do not fail the run: the log and the summary
    are written, and ``summary["plots_error"]`` says why (``narset simulate`` reports it
    and exits 1).

    ``setup``: a [`narset_jax.distributed.DeviceSetup`][] (default: one device, one
    process). With several devices the regions are sharded over them; in a multi-process
    run every process calls this, and only process 0 writes files (every process returns
    the same summary).

    ``controller``: a [`sims.Controller`][] or its name; ``ecology``: an
    [`sims.Ecology`][] or its name (default: the stylised one), whose params ``scenario``
    is (see [`sims.ecologies.load_params`][]). A run of another ecology records it in the
    manifest config (``ecology``, and its ``manifest_entries``: for the neural one the
    dataset's hash, generator arguments and mnist1d version) and in the summary."""
    from narset_jax.decision_log import OutputDir

    main = setup is None or setup.is_main
    n_processes = 1 if setup is None else setup.num_processes
    eco = get_ecology(ecology)
    if setup is not None and len(setup.devices) > 1 and not eco.shardable:
        from narset_jax.errors import UserError

        raise UserError(f"the {eco.name} ecology runs on one device only (its state is not "
                        "split by the sharded rollout); use --devices 1")
    check_memory(n_regions, dtype, chunk, n_processes)
    od = OutputDir(out, force=force) if main else None
    with od if od is not None else contextlib.nullcontext():
        summary = _run(params, scenario, n_regions=n_regions, n_steps=n_steps, seed=seed,
                       stage=None if od is None else od.stage, controller=controller,
                       ecology=ecology, dtype=dtype, chunk=chunk,
                       sample_regions=sample_regions, plots=plots, progress=progress,
                       params_file=params_file, setup=setup, sign_key=sign_key)
        if od is not None:
            od.commit()
    return summary


def _run(params, scenario, *, n_regions, n_steps, seed, stage, controller, ecology, dtype,
         chunk, sample_regions, plots, progress, params_file, setup, sign_key) -> dict:
    """[`simulate`][sims.simulate.simulate] into ``stage`` (``None``: a process that
    writes nothing)."""
    from tqdm import tqdm

    ctl = get_controller(controller)
    controller = ctl.name
    eco = get_ecology(ecology)
    jdtype = jnp.dtype(dtype).type
    main = stage is not None
    n_devices = 1 if setup is None else len(setup.devices)
    n_processes = 1 if setup is None else setup.num_processes
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    if n_devices == 1:
        loop = _OneDevice(params, scenario, ctl, eco, n_regions, jdtype)
    else:
        loop = _Sharded(params, scenario, ctl, eco, n_regions, jdtype, setup.devices)
    carry = loop.init(key)

    k = min(sample_regions, n_regions)
    sample = np.unique(np.linspace(0, n_regions - 1, k).round().astype(int)) if k else []
    track = {name: [] for name in ("x_T", "x_E", "spent", "mode")}
    means = {name: [] for name in ("mean x_T", "mean x_E", "repair share", "health")}

    config = {
        "command": "simulate",
        "scenario": scenario.name,
        "scenario_values": scenario.to_dict(),
        "controller": controller,
        "regions": n_regions,
        "steps": n_steps,
        "chunk": chunk,
        "dtype": dtype,
        "params_file": params_file,
        "devices": n_devices,
        "processes": n_processes,
    }
    if eco.name != "stylised":
        # The default ecology's manifest is left as it always was (the goldens hold it).
        config["ecology"] = eco.name
        config.update(eco.manifest_entries(scenario))
    bar = tqdm(total=n_steps, unit="window", desc=f"simulate {scenario.name}",
               disable=not (progress and main), file=sys.stderr, leave=False)
    buffer: list = []
    regions = None  # the log's region ids, for the ground truth

    def flush(writer):
        nonlocal regions
        # Every process gathers (a collective in a multi-process run); process 0 writes.
        cols, health = loop.collect(buffer)
        buffer.clear()
        if writer is None:
            return
        writer.write(cols)
        if regions is None:
            regions = np.asarray(cols["region"])[0]
        for name in track:
            track[name].append(np.asarray(cols[name])[:, sample])
        means["mean x_T"].append(cols["x_T"].mean(axis=1))
        means["mean x_E"].append(cols["x_E"].mean(axis=1))
        means["repair share"].append(cols["mode_weight"].mean(axis=1))
        means["health"].append(health.mean(axis=1))

    log = (
        DecisionLogWriter(stage, params=params, n_regions=n_regions, dtype=dtype,
                          config=config, seed=seed, sign_key=sign_key, lock=False)
        if main
        else contextlib.nullcontext()
    )
    try:
        with log as writer:
            try:
                for t in range(n_steps):
                    carry, record = loop.window(carry)
                    buffer.append(record)
                    if len(buffer) == chunk or t == n_steps - 1:
                        flush(writer)
                    bar.update(1)
            except BaseException:
                # Keep every window simulated before the stop (one process: no collective
                # that another process would have to join).
                if buffer and n_processes == 1:
                    with contextlib.suppress(Exception):
                        flush(writer)
                raise
            metrics = loop.metrics(carry)
            jax.block_until_ready(metrics)
            spoofer = loop.spoofers(carry)  # a collective in a multi-process run
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    if main:
        # After the manifest, which it names: which regions spoof, for narset audit.
        write_truth(stage, regions, spoofer, manifest=log.manifest,
                    source=f"simulate ({eco.name} ecology, scenario {scenario.name})",
                    what="spoofer: the ecology's spoofer mask (the region fakes instability "
                         "in its telemetry)", sign_key=sign_key)

    m = metrics.to_dict()
    score = float(objective(metrics))
    switches = loop.switches(carry)
    outputs = {"log": "decisions/", "manifest": "manifest.json", "summary": "summary.json"}
    plots_error = None
    if plots and main:
        try:
            outputs["plots"] = _plots(
                stage, scenario, controller, params, sample, track, means, switches, n_steps,
            )
        except Exception as err:  # noqa: BLE001 - figures never cost the log or summary
            msg = str(err).splitlines()[0] if str(err) else ""
            plots_error = f"{type(err).__name__}: {msg}".rstrip(": ")
    summary = {
        "scenario": scenario.name,
        "controller": controller,
        "budget": params.budget,
        "regions": n_regions,
        "steps": n_steps,
        "seed": seed,
        "dtype": dtype,
        "devices": n_devices,
        "processes": n_processes,
        "metrics": m,
        "objective": score,
        "weights": DEFAULT_WEIGHTS.to_dict(),
        "wall_seconds": wall,
        "region_windows_per_second": n_regions * n_steps / wall,
        "outputs": outputs,
    }
    if eco.name != "stylised":
        summary["ecology"] = eco.name
    if plots_error is not None:
        summary["plots_error"] = plots_error
    if main:
        write_json(stage / "summary.json", summary)
    return summary


class _OneDevice:
    """One device, one process: the controller as replay's jitted step, then the ecology
    as a second jitted step."""

    def __init__(self, params, scenario, controller, ecology, n_regions, jdtype):
        self.params, self.sc, self.eco = params, ecology.prepare(scenario), ecology
        self.n_regions, self.jdtype = n_regions, jdtype
        self.ctl_step = jitted_step(step_fn(controller))
        self.eco_step, self.metrics_fn, self.init_fn = _compiled(controller, ecology)
        self.stack = _stack()

    def init(self, key):
        return self.init_fn(self.params, self.sc, key, self.n_regions, dtype=self.jdtype)

    def window(self, carry):
        ctl, d = self.ctl_step(self.params, carry.ctl, carry.telemetry)
        carry, (_, _, ev) = self.eco_step(self.params, self.sc, carry, ctl, d)
        return carry, (d, ev.health)

    def collect(self, buffer):
        d, health = jax.device_get(self.stack(buffer))
        return d.columns(), health

    def metrics(self, carry):
        return self.metrics_fn(self.params, self.sc, carry)

    def switches(self, carry):
        return np.asarray(carry.acc.switches)

    def spoofers(self, carry):
        return np.asarray(self.eco.outcome(self.sc, carry.sim).spoofer)


class _Sharded:
    """Regions sharded over ``devices`` (every process's), with
    [`sims.sharding.ShardedRollout`][]'s per-window steps; see the module docstring
    for the global pool, whose controller runs gathered, as replay runs it."""

    def __init__(self, params, scenario, controller, ecology, n_regions, jdtype, devices):
        self.params, self.scenario = params, scenario
        self.gathered = params.budget == "global"
        # The ecology is per region whatever the budget mode, so it always takes the
        # shard_map path (which also pads N to a multiple of the device count).
        self.runner = rollout_runner(
            params.replace(budget="region") if self.gathered else params,
            n_regions,
            region_mesh(devices),
            controller=controller,
            ecology=ecology,
            dtype=jdtype,
        )
        self.ctl_step = jitted_step(step_fn(controller))
        self.stack = _stack()
        self.ctl = None

    def init(self, key):
        carry = self.runner.init(self.params, self.scenario, key)
        if self.gathered:
            # The controller's state lives whole on this process's default device.
            self.ctl = jax.tree.map(jnp.asarray, self.runner.to_host(carry.ctl))
        return carry

    def window(self, carry):
        p, r = self.params, self.runner
        if not self.gathered:
            ctl, d = r.controller_step(p, carry.ctl, carry.telemetry)
            carry, (_, _, ev) = r.advance(p, self.scenario, carry, ctl, d)
            return carry, (d, ev.health)
        tel = jax.tree.map(jnp.asarray, r.to_host(carry.telemetry))
        self.ctl, d = self.ctl_step(p, self.ctl, tel)
        # The ecology never reads the controller's state: the carry keeps its initial
        # one, and self.ctl is the controller's.
        carry, (_, _, ev) = r.advance(p, self.scenario, carry, carry.ctl, r.from_host(d))
        return carry, (d, ev.health)

    def collect(self, buffer):
        if not self.gathered:
            d, health = self.runner.to_host(self.stack(buffer))
        else:
            d = jax.device_get(self.stack([b[0] for b in buffer]))
            health = self.runner.to_host(self.stack([b[1] for b in buffer]))
        return d.columns(), health

    def metrics(self, carry):
        return self.runner.metrics(self.params, self.scenario, carry)

    def switches(self, carry):
        return self.runner.to_host(carry.acc.switches)

    def spoofers(self, carry):
        eco = self.runner.ecology
        return self.runner.to_host(eco.outcome(eco.prepare(self.scenario), carry.sim).spoofer)


@functools.lru_cache(maxsize=4)
def _compiled(controller: Controller, ecology: Ecology):
    """Jitted ecology step, metrics and init (cached per controller and ecology)."""
    return (
        jax.jit(functools.partial(advance, ecology=ecology)),
        jax.jit(functools.partial(rollout_metrics, ecology=ecology)),
        jax.jit(functools.partial(rollout_init, controller=controller, ecology=ecology),
                static_argnames=("n_regions", "dtype")),
    )


@functools.lru_cache(maxsize=1)
def _stack():
    """Jitted stacking of a chunk's per-window records (cached per process)."""
    return jax.jit(lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs))


def _plots(out, scenario, controller, params, sample, track, means, switches, n_steps):
    from narset_jax.plots.simulate import (
        plot_ecology,
        plot_sample_regions,
        plot_switch_histogram,
    )

    steps = np.arange(n_steps)
    names = []
    label = f"{scenario.name}, {controller}"
    if len(sample):
        arr = {k: np.concatenate(v) for k, v in track.items()}
        plot_sample_regions(
            out / "plots" / "regions.png", steps, arr["x_T"], arr["x_E"], arr["spent"],
            arr["mode"], sample, pool=float(params.pool) if params.budget != "fixed_sum"
            else 1.0, title=f"Intensities and spend of sample regions ({label})",
        )
        names.append("plots/regions.png")
    means = {k: np.concatenate(v) for k, v in means.items()}
    plot_ecology(out / "plots" / "ecology.png", steps, means,
                 title=f"Mesh means per window ({label})")
    names.append("plots/ecology.png")
    plot_switch_histogram(out / "plots" / "mode_switches.png", switches, n_steps=n_steps,
                          title=f"Mode switches per region ({label})")
    names.append("plots/mode_switches.png")
    return names
