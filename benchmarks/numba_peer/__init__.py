"""A compiled peer of the closed loop: the same windows as ``sims/numpy_twin.py`` written as
one Numba loop, and the benchmark that sets it beside JAX and NumPy.

**The peer.** Controller (``"narset"``, hard hysteresis, per-region budget, seed or convex
cost, equal weights) plus the stylised ecology and the metric accumulators, with the same
counter-based random numbers as ``sims._rng``: a loop over windows, and inside it a loop over
regions (``numba.prange``, ``parallel=True``) that runs the whole window of one region in
registers: sanitise, smoothing, scores, hysteresis, policy, inertia, the exact projection
(the ten candidates of ``narset_jax.budget``), authority tiers, the ecology's transition and
the accumulators. It is what a performance-minded user would write on a CPU, and a third
oracle: ``tests/test_numba_peer.py`` asserts agreement with the NumPy twin to 1e-9 in
float64. The state travels as named tuples of ``[N]`` arrays (structure of arrays, the
fields of the twin's carry), updated in place.

In float32 the state is stored in float32 and the arithmetic is Numba's typing of this code
(a float32 value meeting a Python float literal is computed in float64), so float32 runs
are for speed, not for agreement.

The kernels are in ``benchmarks/numba_peer/kernel.py``; this module moves the state in and
out.

**The benchmark** (``benchmarks/numba_peer/bench.py``;
``python -m benchmarks.numba_peer --out benchmarks/results/numba_peer.json``):
at each N, in interleaved rounds (one repetition of every row per round; the machine may be
shared), float32, per-region pool, ``steady``:

* ``jax``: the jitted chunk of ``benchmarks.step`` (``sims.rollout_chunk``, one device);
* ``jax_2dev``: the same chunk sharded over two host devices (``sims.sharding``), in a child
  process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` that times on
  request, so its repetitions interleave with the others;
* ``numpy``: the NumPy twin (``--numpy-steps`` windows);
* ``numba_1``, ``numba_2``: this peer with 1 and 2 Numba threads.

Each row reports the median over rounds of region-windows per second and per CPU-second
(``process_time``, all threads of the process that ran it).
"""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import numpy as np

from benchmarks.numba_peer import kernel
from sims.scenario import Scenario

__all__ = ["NumbaPeer", "available"]

SIM_FIELDS = (
    "region", "k0", "k1", "g0", "g1", "lr", "fragility", "noise_mult", "scale",
    "bloat_prop", "spoof_u", "pos", "loss0", "health", "loss", "cap", "bloat", "active",
    "fossil", "stress", "panic", "prev_x_T", "prev_x_E", "outage", "burst", "spiked",
)
SIGNAL_FIELDS = (
    "ewma_loss", "ewma_rollbacks", "ewma_anomalies", "ewma_nonfinite", "ewma_lstm_health",
    "ewma_growth_ratio", "ewma_churn", "ewma_alpha_shock", "ewma_active_seeds",
    "ewma_fossilised_seeds", "mem_rollbacks", "mem_anomalies", "mem_nonfinite",
    "mem_lstm_health", "trend", "plateau", "n_valid", "n_loss",
)
HYST_FIELDS = ("mode", "enter_count", "exit_count")
CTL_FIELDS = ("region", "step", "staleness", *SIGNAL_FIELDS, *HYST_FIELDS, "target_T",
              "target_E")
TEL_FIELDS = (
    "loss", "rollbacks", "anomalies", "nonfinite", "lstm_health", "growth_ratio", "churn",
    "alpha_shock", "active_seeds", "fossilised_seeds", "valid", "boundary",
)
ACC_FIELDS = (
    "switches", "churn", "overdrive", "unsafe", "rollbacks", "panics", "lysis", "spend",
    "health", "mode", "x_T", "x_E", "missing", "prev_mode", "prev_x_T", "prev_x_E",
)
PARAM_FIELDS = (
    "pool", "alpha", "beta", "theta_enter", "theta_exit", "k_enter", "k_exit",
    "tau_sedate", "tau_lysis", "tau_germinate", "tau_fossilise", "rate_loss", "rate_trend",
    "rate_rollbacks", "rate_anomalies", "rate_nonfinite", "rate_lstm_health",
    "rate_growth_ratio", "rate_churn", "rate_alpha_shock", "rate_active_seeds",
    "rate_fossilised_seeds", "persist_decay", "scale_rollbacks", "scale_anomalies",
    "scale_nonfinite", "lstm_warn", "lstm_critical", "plateau_eps", "plateau_window",
    "trend_ref", "growth_green", "growth_red", "churn_ref", "shock_ref", "weight_rent",
    "weight_churn", "weight_shock", "weight_active", "gain_T_repair", "gain_T_crisis",
    "gain_E_repair", "gain_T_consol", "gain_T_progress", "gain_T_efficiency",
    "gain_E_consol", "gain_E_efficiency",
)

Sim = namedtuple("Sim", SIM_FIELDS)
Ctl = namedtuple("Ctl", CTL_FIELDS)
Tel = namedtuple("Tel", TEL_FIELDS)
Acc = namedtuple("Acc", ACC_FIELDS)
Params = namedtuple("Params", PARAM_FIELDS)
SCENARIO_FIELDS = tuple(Scenario.float_names())
ScenarioParams = namedtuple("ScenarioParams", SCENARIO_FIELDS)


def available() -> bool:
    """Whether Numba is installed (it is a benchmark dependency, the ``bench`` extra)."""
    return kernel.numba is not None


# ---------------------------------------------------------------------------------------
# The Python side: state in and out, and the run.


class NumbaPeer:
    """The closed loop of ``params`` and ``scenario`` (the JAX objects, as for
    ``sims.numpy_twin.window``) as one Numba program, on a state built from a NumPy twin
    carry (``sims.numpy_twin.from_jax(sims.rollout_init(...))``).

    ``run(n_steps)`` advances the state in place; ``carry()`` returns it as a twin
    ``Carry`` (so ``sims.numpy_twin.metrics`` reads it)."""

    def __init__(self, params, scenario, carry):
        if not available():
            raise RuntimeError("the Numba peer needs numba (pip install numba, the bench extra)")
        if params.hysteresis != "hard" or params.budget != "region":
            raise ValueError("the Numba peer runs hard hysteresis and the per-region budget only")
        if params.cost not in kernel.COSTS:
            raise ValueError(
                f"the Numba peer runs the costs {tuple(kernel.COSTS)}, got {params.cost!r}")
        dtype = carry.sim.health.dtype
        self.dtype = dtype
        self.cost = kernel.COSTS[params.cost]
        self.is64 = dtype == np.float64
        sc = scenario.without_metadata() if hasattr(scenario, "without_metadata") else scenario
        names = tuple(sc.float_names())
        self.P = Params(*(dtype.type(np.asarray(getattr(params, k))) for k in PARAM_FIELDS))
        if names != SCENARIO_FIELDS:
            raise ValueError("the Numba peer runs the stylised ecology's Scenario only")
        self.SC = ScenarioParams(*(dtype.type(np.asarray(getattr(sc, k))) for k in names))
        copy = lambda x: np.ascontiguousarray(np.array(x))  # noqa: E731
        self.sim = Sim(*(copy(getattr(carry.sim, k)) for k in SIM_FIELDS))
        ctl = {"region": carry.ctl.region, "step": carry.ctl.step,
               "staleness": carry.ctl.staleness, "target_T": carry.ctl.target_T,
               "target_E": carry.ctl.target_E}
        ctl.update(vars(carry.ctl.signals))
        ctl.update(vars(carry.ctl.hysteresis))
        self.ctl = Ctl(*(copy(ctl[k]) for k in CTL_FIELDS))
        self.tel = Tel(*(copy(getattr(carry.telemetry, k)) for k in TEL_FIELDS))
        self.acc = Acc(*(copy(getattr(carry.acc, k)) for k in ACC_FIELDS))
        self.n_acc = int(carry.acc.n)
        self.t = int(carry.t)
        self.g0 = np.uint64(self.sim.g0[0])
        self.g1 = np.uint64(self.sim.g1[0])

    def run(self, n_steps: int, *, parallel: bool = True):
        """Advance ``n_steps`` windows in place (``parallel``: the ``prange`` kernel on
        ``numba.get_num_threads()`` threads; otherwise the serial one)."""
        fn = kernel.run_parallel if parallel else kernel.run_serial
        fn(self.P, self.SC, self.cost, self.is64, self.sim, self.ctl, self.tel, self.acc,
             self.g0, self.g1, self.t, n_steps)
        self.t += n_steps
        self.n_acc += n_steps
        return self

    def carry(self):
        """The state as a ``sims.numpy_twin.Carry`` (copies)."""
        from sims.numpy_twin import Carry

        c = {k: np.array(getattr(self.ctl, k)) for k in CTL_FIELDS}
        ctl = SimpleNamespace(
            region=c["region"], step=c["step"], staleness=c["staleness"],
            signals=SimpleNamespace(**{k: c[k] for k in SIGNAL_FIELDS}),
            hysteresis=SimpleNamespace(**{k: c[k] for k in HYST_FIELDS}),
            target_T=c["target_T"], target_E=c["target_E"],
        )
        acc = {k: np.array(getattr(self.acc, k)) for k in ACC_FIELDS}
        return Carry(
            sim=SimpleNamespace(**{k: np.array(getattr(self.sim, k)) for k in SIM_FIELDS}),
            ctl=ctl,
            telemetry=SimpleNamespace(**{k: np.array(getattr(self.tel, k))
                                         for k in TEL_FIELDS}),
            acc=SimpleNamespace(n=np.asarray(self.n_acc, np.int32), **acc),
            t=self.t,
        )
