"""The closed loop (controller plus simulator, one window at a time) in NumPy.

Same semantics as ``sims.rollout`` with the ``"narset"`` controller, executed eagerly by
NumPy on ``[N]`` arrays (structure of arrays). It is the speed baseline of the step
benchmark (``python -m benchmarks.step``) and a second oracle in
``tests/test_numpy_oracle.py``.

How it is built, and so what it checks:

- **The formulas of each stage** (sanitise, smoothing, scores, hysteresis, policy, inertia,
  the per-region projection, authority, the ecology's transition, its counter-based random
  numbers, the metrics) are the library's own functions, re-bound to a namespace where
  ``jnp`` is NumPy ([`sims.numpy_twin.numpy_twin`][]; every module a stage calls into is
  twinned too, and so are the cost models' methods). They are the same lines of Python, run
  by NumPy instead of traced by JAX. ``benchmarks/projection.py`` times the budget's twin.
- **Everything that ties the stages together** is written out here by hand: the decision
  window (``narset_step``), the global pool's bisection (``project_global_pool``, a
  ``fori_loop`` in JAX), the fixed-sum projection, the closed loop and its metric
  accumulators (``sims.rollout``), and the time loop itself (a Python ``for`` instead of
  ``lax.scan``).

So agreement with JAX checks tracing, ``jit``, ``scan``, sharding, dtype handling and the
plumbing between stages; it does not re-derive a stage's maths (the budget has its own
60-digit reference in ``narset_jax.testing.reference_budget``). The initial state (whose
per-region keys come from ``jax.random.fold_in``) is taken from ``sims.rollout_init``.

    from sims import numpy_twin as ref
    carry = ref.from_jax(sims.rollout_init(params, scenario, key, n))
    for _ in range(T):
        carry = ref.window(params, scenario, carry)
    ref.metrics(params, scenario, carry)

Not imported by ``import sims``: importing it builds the NumPy twins of the stage modules.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import numpy as np

import narset_jax.authority as _authority
import narset_jax.budget as _budget
import narset_jax.cost as _costs
import narset_jax.hysteresis as _hysteresis
import narset_jax.policy as _policy
import narset_jax.signals as _signals
import narset_jax.telemetry as _telemetry
import sims._rng as _rng
import sims.ecologies.stylised as _ecology
import sims.metrics as _metrics

__all__ = ["Carry", "from_jax", "metrics", "numpy_twin", "take", "window", "TWINS"]


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# What twinned code sees as ``jax``: only the few names the hard/soft paths use.
_JAX_SHIM = SimpleNamespace(
    nn=SimpleNamespace(sigmoid=_sigmoid),
    lax=SimpleNamespace(stop_gradient=lambda x: x),
)


def numpy_twin(module, **extra) -> dict:
    """The module's functions re-bound to globals where ``jnp`` is NumPy (and ``jax`` a
    small shim): the same maths, line for line, executed eagerly by NumPy."""
    ns = dict(vars(module))
    ns["jnp"] = np
    ns["jax"] = _JAX_SHIM
    ns.update(extra)
    for name, obj in list(ns.items()):
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            ns[name] = types.FunctionType(obj.__code__, ns, name, obj.__defaults__, obj.__closure__)
    return ns


_MODULES = {
    "telemetry": _telemetry,
    "hysteresis": _hysteresis,
    "signals": _signals,
    "policy": _policy,
    "budget": _budget,
    "cost": _costs,
    "authority": _authority,
    "rng": _rng,
    "ecology": _ecology,
    "metrics": _metrics,
}
# Extra globals of a module's twin.
_EXTRA = {"rng": {"U32": np.uint32}}
_PACKAGES = ("narset_jax", "sims")


def _reached(modules: dict) -> dict:
    """``modules``, and every module of ours whose functions they call (keyed by its full
    name): a stage spread over several modules is twinned whole, so no part of it runs in
    JAX by mistake."""
    out = dict(modules)
    seen = {m.__name__ for m in out.values()}
    todo = list(out.values())
    while todo:
        for obj in vars(todo.pop()).values():
            owner = obj.__module__ if isinstance(obj, types.FunctionType) else ""
            if owner.split(".")[0] in _PACKAGES and owner not in seen:
                seen.add(owner)
                out[owner] = sys.modules[owner]
                todo.append(out[owner])
    return out


def _build_twins() -> dict[str, dict]:
    modules = _reached(_MODULES)
    twins = {key: numpy_twin(mod, **_EXTRA.get(key, {})) for key, mod in modules.items()}
    # A function one module imports from another calls the other module's twin.
    twin_of = {}
    for key, mod in modules.items():
        for name, obj in vars(mod).items():
            if isinstance(obj, types.FunctionType) and obj.__module__ == mod.__name__:
                twin_of[obj] = twins[key][name]
    for ns in twins.values():
        for name, obj in list(ns.items()):
            if isinstance(obj, types.FunctionType) and obj in twin_of:
                ns[name] = twin_of[obj]
    # Cost models are objects: the twin's registry makes models whose methods are twins.
    by_module = {modules[key].__name__: ns for key, ns in twins.items()}
    twins["cost"]["COST_MODELS"] = {
        name: _twin_class(cls, by_module) for name, cls in _costs.COST_MODELS.items()
    }
    return twins


def _twin_class(cls, by_module: dict):
    """A subclass of ``cls`` whose methods, its own and inherited from twinned modules, run
    in the twins' namespaces."""
    methods = {}
    for base in reversed(cls.__mro__):
        ns = by_module.get(base.__module__)
        if ns is None:
            continue
        for name, fn in vars(base).items():
            if isinstance(fn, types.FunctionType) and not name.startswith("__"):
                methods[name] = types.FunctionType(fn.__code__, ns, name, fn.__defaults__,
                                                   fn.__closure__)
    return type(cls.__name__, (cls,), methods)


TWINS = _build_twins()


# ---------------------------------------------------------------------------------------
# Data: plain objects of NumPy arrays, field for field as in the JAX pytrees.


class _Leaves(SimpleNamespace):
    """A params or scenario object with NumPy scalar leaves (``astype`` keeps it NumPy)."""

    def astype(self, dtype):
        return _Leaves(
            **{k: (np.asarray(v, dtype) if isinstance(v, np.ndarray) else v)
               for k, v in vars(self).items()}
        )


def _leaves(module, dtype) -> _Leaves:
    out = {}
    for f in dataclasses.fields(module):
        v = getattr(module, f.name)
        out[f.name] = v if isinstance(v, str) or v is None else np.asarray(v, dtype)
    return _Leaves(**out)


def _to_numpy(tree):
    """A JAX pytree of arrays (eqx Modules) as nested SimpleNamespaces of NumPy arrays."""
    if dataclasses.is_dataclass(tree):
        return SimpleNamespace(
            **{f.name: _to_numpy(getattr(tree, f.name)) for f in dataclasses.fields(tree)}
        )
    return np.array(tree)


@dataclasses.dataclass
class Carry:
    """What the closed loop carries between windows (mirrors ``sims.RolloutCarry``)."""

    sim: SimpleNamespace
    ctl: SimpleNamespace
    telemetry: SimpleNamespace
    acc: SimpleNamespace
    t: int


def from_jax(carry) -> Carry:
    """A ``sims.RolloutCarry`` (e.g. from ``sims.rollout_init``) as a NumPy [`Carry`][]."""
    c = _to_numpy(carry)
    return Carry(sim=c.sim, ctl=c.ctl, telemetry=c.telemetry, acc=c.acc, t=int(c.t))


def take(carry: Carry, index) -> Carry:
    """The regions ``index`` (a slice or index array) of a carry."""

    def sub(ns):
        if isinstance(ns, SimpleNamespace):
            return SimpleNamespace(**{k: sub(v) for k, v in vars(ns).items()})
        return ns[index] if np.ndim(ns) else ns

    return Carry(sub(carry.sim), sub(carry.ctl), sub(carry.telemetry), sub(carry.acc), carry.t)


# ---------------------------------------------------------------------------------------
# The budget stage (narset_jax.step._project and narset_jax.budget, forward pass only).


def _clip_targets(t):
    return np.maximum(np.where(np.isfinite(t), t, 0), 0)


def project(p, t_T, t_E):
    """``(x_T, x_E, spent, price)`` for the params' budget mode."""
    b = TWINS["budget"]
    dtype = t_T.dtype
    if p.budget == "fixed_sum":
        a = b["project_fixed_sum"](t_T, t_E)
        return a.x_T, a.x_E, a.spent, a.price
    tT, tE = _clip_targets(t_T), _clip_targets(t_E)
    alpha = np.asarray(p.alpha, dtype)
    one = np.ones((), dtype)
    if p.budget == "region":
        x_T, x_E, price = b["_solve"](p.cost, False, tT, tE, np.asarray(p.pool, dtype), alpha,
                                      one, one)
        spent = b["_cost"](x_T, alpha, p.cost) + b["_cost"](x_E, alpha, p.cost)
        return x_T, x_E, spent, price
    # Global pool: one multiplier, by the same fixed-count bisection as
    # ``project_global_pool`` (its value; the implicit-gradient term adds exactly 0).
    B = np.asarray(p.pool * tT.shape[-1], dtype)
    parts = b["_lagrangian_parts"]

    def total(lam):
        return np.sum(parts(tT, tE, one, one, lam, alpha, p.cost)[2])

    iters = 60 if dtype == np.float64 else 32
    zero = np.zeros((), dtype)
    need = total(zero) > B
    hi = np.max(np.maximum(tT, tE)) * (2 + 1 / alpha) + 1
    for _ in range(4):
        hi = np.where(total(hi) > B, 2 * hi, hi).astype(dtype)
    lo = zero
    for _ in range(iters):
        mid = (0.5 * (lo + hi)).astype(dtype)
        over = total(mid) > B
        lo, hi = np.where(over, mid, lo), np.where(over, hi, mid)
    lam = np.where(need, hi, 0).astype(dtype)
    x_T, x_E, spent = parts(tT, tE, one, one, lam, alpha, p.cost)
    return x_T, x_E, spent, np.broadcast_to(lam, tT.shape)


# ---------------------------------------------------------------------------------------
# One decision window (narset_jax.step.narset_step) and one closed-loop window
# (sims.rollout.advance), "narset" controller.


def controller_step(p, state, tel):
    """``(state, decision)``: the controller's window. ``p`` has NumPy leaves in the
    state dtype; ``tel`` is a namespace of ``[N]`` arrays."""
    dtype = state.target_T.dtype
    variant = p.hysteresis
    clean = TWINS["telemetry"]["sanitise"](tel, dtype)
    valid = clean.valid
    sig = TWINS["signals"]["smooth"](p, state.signals, clean, variant)
    sc = TWINS["signals"]["scores"](p, sig)
    hyst = TWINS["hysteresis"]["update_mode"](p, state.hysteresis, sc.need, valid, variant)
    t_T, t_E = TWINS["policy"]["targets"](p, hyst.mode, sc)
    tgt_T, tgt_E = TWINS["policy"]["inertia"](
        p.beta, state.target_T, state.target_E, t_T, t_E, valid
    )
    x_T, x_E, spent, price = project(p, tgt_T, tgt_E)
    auth = TWINS["authority"]["authority"](p, x_T, x_E, clean.boundary)
    staleness = np.where(valid, 0, state.staleness + 1).astype(np.int32)
    new_state = SimpleNamespace(
        region=state.region,
        step=(state.step + 1).astype(np.int32),
        staleness=staleness,
        signals=sig,
        hysteresis=hyst,
        target_T=tgt_T,
        target_E=tgt_E,
    )
    decision = SimpleNamespace(
        x_T=x_T,
        x_E=x_E,
        spent=spent,
        price=price,
        overdrive_T=x_T > 1,
        overdrive_E=x_E > 1,
        mode=(hyst.mode >= 0.5).astype(np.int32),
        mode_weight=hyst.mode,
        tier_T=auth.tier_T,
        tier_E=auth.tier_E,
        need=sc.need,
        stability=sc.stability,
        progress=sc.progress,
        efficiency=sc.efficiency,
        target_T=tgt_T,
        target_E=tgt_E,
        raw=clean.raw,
    )
    return new_state, decision


def window(params, scenario, carry: Carry) -> Carry:
    """One closed-loop window: the controller reads the last telemetry and decides, the
    ecology runs the window under that decision. ``params`` and ``scenario`` are the JAX
    objects (hard hysteresis; ``"narset"`` controller)."""
    dtype = carry.sim.health.dtype
    p = _leaves(params, dtype)
    sc = _leaves(scenario, dtype)
    if p.hysteresis != "hard":
        raise ValueError("the NumPy reference runs hard hysteresis only")
    ctl, d = controller_step(p, carry.ctl, carry.telemetry)
    sim = carry.sim
    with np.errstate(over="ignore"):
        sim_new, tel, ev = TWINS["ecology"]["sim_transition"](sc, sim, d, carry.t, relax="hard")
    acc = carry.acc
    m = d.mode_weight
    od = (d.overdrive_T | d.overdrive_E).astype(dtype)
    acc = SimpleNamespace(
        n=acc.n + 1,
        switches=acc.switches + np.abs(m - acc.prev_mode),
        churn=acc.churn + np.abs(d.x_T - acc.prev_x_T) + np.abs(d.x_E - acc.prev_x_E),
        overdrive=acc.overdrive + od,
        unsafe=acc.unsafe + ev.unsafe,
        rollbacks=acc.rollbacks + ev.rollback,
        panics=acc.panics + ev.panic,
        lysis=acc.lysis + ev.lysis,
        spend=acc.spend + d.spent,
        health=acc.health + ev.health,
        mode=acc.mode + m,
        x_T=acc.x_T + d.x_T,
        x_E=acc.x_E + d.x_E,
        missing=acc.missing + (~d.raw.valid).astype(dtype),
        prev_mode=m,
        prev_x_T=d.x_T,
        prev_x_E=d.x_E,
    )
    sim_ns = SimpleNamespace(**{f.name: getattr(sim_new, f.name)
                                for f in dataclasses.fields(sim_new)})
    tel_ns = SimpleNamespace(**{f.name: getattr(tel, f.name) for f in dataclasses.fields(tel)})
    carry = Carry(sim=sim_ns, ctl=ctl, telemetry=tel_ns, acc=acc, t=carry.t + 1)
    carry.last = (d, tel_ns, ev)
    return carry


def metrics(params, scenario, carry: Carry) -> dict:
    """``sims.rollout_metrics`` of the windows run so far, as ``name -> float``."""
    dtype = carry.sim.health.dtype
    p = _leaves(params, dtype)
    sc = _leaves(scenario, dtype)
    pool = np.ones((), dtype) if p.budget == "fixed_sum" else p.pool
    outcome = TWINS["ecology"]["outcome"](sc, carry.sim)
    m = TWINS["metrics"]["metrics_from"](carry.acc, outcome, pool)
    return {f.name: float(getattr(m, f.name)) for f in dataclasses.fields(m)}
