"""Projection throughput and accuracy: JAX vs the same maths in NumPy vs generic solvers.

Every number in the JSON comes from this one run on this one machine; speed claims are
ratios against baselines measured in the same run.

    python -m benchmarks.projection --out benchmarks/results/projection.json

Rows:

* ``jax``: ``jax.jit(project_budget)`` in float32 (seed cost, equal weights), N = 1e3..1e7.
* ``numpy``: the *same code* (``narset_jax.budget._solve``) executed by NumPy instead of
  ``jax.numpy`` (its functions are rebound to a namespace where ``jnp`` is ``numpy``: the
  budget's twin in ``sims.numpy_twin``, which the NumPy closed loop uses too).
* ``slsqp``: scipy SLSQP per instance with 4 starts (seed cost), on a small sample.
* ``cvxpy``: cvxpy per instance (convex cost; the seed cost is not DCP), on a small sample.
* ``profile``: the time of each group of candidate pieces, jitted alone at N = 1e6.

Errors are the max-norm distance to the 60-digit reference in
``narset_jax.testing.reference_budget``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import narset_jax as nj
import narset_jax.budget as budget
from benchmarks import _common
from sims.numpy_twin import TWINS

POOL, ALPHA = 1.5, 2.0


def targets(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(-0.25, 2.5, n).astype(dtype),
        rng.uniform(-0.25, 2.5, n).astype(dtype),
    )


def bench_jax(sizes, repeats, rounds):
    """Best-of-``repeats`` time per size, in ``rounds`` interleaved rounds; the row's rate
    is the median round (this shared VM drifts by +-20% over minutes), all are kept."""
    fn = jax.jit(lambda a, b: nj.project_budget(a, b, pool=POOL, alpha=ALPHA))
    data, rows = {}, []
    for n in sizes:
        a, b = (jnp.asarray(v) for v in targets(n, np.float32))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(a, b))
        data[n] = (a, b, time.perf_counter() - t0, [])
    for _ in range(rounds):
        for n in sizes:
            a, b, _, rates = data[n]
            rates.append(n / _common.best_time(fn, a, b, repeats=repeats))
    for n in sizes:
        rates = data[n][3]
        med = float(np.median(rates))
        rows.append(
            {
                "n": n,
                "seconds": n / med,
                "per_second": med,
                "per_second_rounds": rates,
                "first_call_s": data[n][2],
            }
        )
        spread = ", ".join(f"{r / 1e6:.1f}" for r in rates)
        print(f"jax    N={n:>10,d}  {med / 1e6:8.2f} M/s (median of rounds: {spread})", flush=True)
    return rows


def bench_numpy(sizes, repeats):
    solve = TWINS["budget"]["_solve"]
    rows = []
    for n in sizes:
        a, b = targets(n, np.float32)
        a, b = np.maximum(a, 0), np.maximum(b, 0)
        B, al, w = np.float32(POOL), np.float32(ALPHA), np.float32(1)

        def run(a=a, b=b, B=B, al=al, w=w):
            with np.errstate(all="ignore"):
                return solve("seed", False, a, b, B, al, w, w)

        dt = _common.best_time(run, repeats=max(1, repeats // 2), min_time=0.0)
        rows.append({"n": n, "seconds": dt, "per_second": n / dt})
        print(f"numpy  N={n:>9,d}  {n / dt / 1e6:8.2f} M/s", flush=True)
    return rows


def bench_slsqp(n):
    from scipy.optimize import minimize

    a, b = targets(n, np.float64, seed=1)
    cons = {
        "type": "ineq",
        "fun": lambda x: POOL - float(np.sum(_seed_cost(x))),
        "jac": lambda x: -_seed_dcost(x),
    }
    starts = [(0.25, 0.25), (1.2, 0.1), (0.1, 1.2), (0.75, 0.75)]
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        t = np.array([max(a[i], 0), max(b[i], 0)])
        best = None
        for s in starts:
            r = minimize(
                lambda x, t=t: 0.5 * float(np.sum((x - t) ** 2)),
                np.array(s),
                jac=lambda x, t=t: x - t,
                bounds=[(0, None), (0, None)],
                constraints=[cons],
                method="SLSQP",
                options={"ftol": 1e-12, "maxiter": 200},
            )
            if r.success and np.sum(_seed_cost(r.x)) <= POOL * (1 + 1e-9):
                if best is None or r.fun < best.fun:
                    best = r
        out.append(best.x if best is not None else np.array([np.nan, np.nan]))
    dt = time.perf_counter() - t0
    return {"n": n, "seconds": dt, "per_second": n / dt}, a, b, np.array(out)


def bench_cvxpy(n):
    import cvxpy as cp

    a, b = targets(n, np.float64, seed=2)
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        x = cp.Variable(2, nonneg=True)
        t = np.array([a[i], b[i]])
        over = cp.pos(x - 1)
        cost = cp.sum(x) + ALPHA * cp.sum_squares(over)
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - t)), [cost <= POOL])
        prob.solve()
        out.append(np.asarray(x.value))
    dt = time.perf_counter() - t0
    return {"n": n, "seconds": dt, "per_second": n / dt}, a, b, np.array(out)


def _seed_cost(x):
    o = np.maximum(x - 1, 0)
    return np.minimum(x, 1) + ALPHA * o * o


def _seed_dcost(x):
    return np.where(x > 1, 2 * ALPHA * (x - 1), 1.0)


def max_error(a, b, x, cost):
    from narset_jax.testing import reference_budget as ref

    refs = [ref.solve_region(float(ai), float(bi), POOL, ALPHA, cost) for ai, bi in zip(a, b)]
    xr = np.array([[r.x_T, r.x_E] for r in refs])
    return float(np.nanmax(np.abs(np.asarray(x, np.float64) - xr)))


def profile(n, repeats):
    """Where the time goes (float32, N = n): each group of candidate pieces jitted alone,
    run in the same cache-sized blocks as ``project_budget``, plus the full projection
    with and without blocking (the difference is main-memory traffic between XLA's
    fusions)."""
    a, b = (jnp.asarray(np.maximum(v, 0)) for v in targets(n, np.float32))
    B, al = jnp.float32(POOL), jnp.float32(ALPHA)
    w = jnp.float32(1)
    parts = {
        "full projection, unblocked": (
            lambda a, b: budget._solve("seed", False, a, b, B, al, w, w),
            None,
        ),
        "full projection, blocked": (
            lambda a, b: budget._solve("seed", False, a, b, B, al, w, w),
            "auto",
        ),
        "feasibility test + clip": (
            lambda a, b: jnp.where(
                budget._cost(a, al, "seed") + budget._cost(b, al, "seed") <= B, a, b
            ),
            "auto",
        ),
        "one over/linear piece (cubic, both orders)": (
            lambda a, b: (
                budget._over_lin_candidates(a, b, w, w, B, al, "seed"),
                budget._over_lin_candidates(b, a, w, w, B, al, "seed"),
            ),
            "auto",
        ),
        "both-overdrive piece (radial)": (
            lambda a, b: budget._radial_candidate(a, b, B, al, "seed"),
            "auto",
        ),
        "KKT price": (
            lambda a, b: budget._kkt_price(a, b, a * 0.9, b * 0.9, w, w, al, "seed"),
            "auto",
        ),
        "memory floor (a + b)": (lambda a, b: a + b, "auto"),
    }
    out = {}
    for name, (f, block) in parts.items():
        # Each piece's outputs are summed into one array so that nothing is dead code.
        def one(a, b, f=f):
            leaves = jax.tree.leaves(f(a, b))
            return sum(jnp.broadcast_to(x, a.shape).astype(a.dtype) for x in leaves)

        f = jax.jit(
            lambda a, b, one=one, block=block: budget.map_blocks(one, a, b, block_size=block)
        )
        jax.block_until_ready(f(a, b))
        out[name] = _common.best_time(f, a, b, repeats=repeats) / n * 1e9
        print(f"profile {name:44s} {out[name]:7.2f} ns/projection", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/projection.json")
    p.add_argument("--max-n", type=float, default=1e7)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--slsqp-n", type=int, default=100)
    p.add_argument("--cvxpy-n", type=int, default=50)
    args = p.parse_args(argv)

    sizes = [n for n in (10**3, 10**4, 10**5, 10**6, 10**7) if n <= args.max_n]
    result = {"machine": _common.machine(), "pool": POOL, "alpha": ALPHA}
    result["jax"] = bench_jax(sizes, args.repeats, args.rounds)
    result["numpy"] = bench_numpy([n for n in sizes if 10**5 <= n <= 10**6], args.repeats)
    result["profile_ns_per_projection"] = profile(min(10**6, sizes[-1]), args.repeats)

    # Accuracy against the reference, float32 JAX and NumPy on the same sample.
    a, b = targets(300, np.float32, seed=3)
    r = nj.project_budget(jnp.asarray(a), jnp.asarray(b), pool=POOL, alpha=ALPHA)
    errors = {"jax_float32": max_error(a, b, np.stack([r.x_T, r.x_E], 1), "seed")}
    a64, b64 = (v.astype(np.float64) for v in (a, b))
    with jax.enable_x64(True):
        r64 = nj.project_budget(jnp.asarray(a64), jnp.asarray(b64), pool=POOL, alpha=ALPHA)
        errors["jax_float64"] = max_error(a64, b64, np.stack([r64.x_T, r64.x_E], 1), "seed")
    with np.errstate(all="ignore"):
        xt, xe, _ = TWINS["budget"]["_solve"](
            "seed", False, np.maximum(a64, 0), np.maximum(b64, 0), 1.5, 2.0, 1.0, 1.0
        )
    errors["numpy_float64"] = max_error(a64, b64, np.stack([xt, xe], 1), "seed")

    row, a, b, x = bench_slsqp(args.slsqp_n)
    row["max_error"] = max_error(a, b, x, "seed")
    row["failures"] = int(np.isnan(x).any(axis=1).sum())
    result["slsqp"] = row
    print(f"slsqp  {row['per_second']:10.1f} /s  max error {row['max_error']:.2e}", flush=True)
    try:
        row, a, b, x = bench_cvxpy(args.cvxpy_n)
        row["max_error"] = max_error(a, b, x, "convex")
        result["cvxpy"] = row
        print(f"cvxpy  {row['per_second']:10.1f} /s  max error {row['max_error']:.2e}")
    except ImportError:
        result["cvxpy"] = None
    result["errors"] = errors

    jax_at = {r["n"]: r["per_second"] for r in result["jax"]}
    np_at = {r["n"]: r["per_second"] for r in result["numpy"]}
    n_cmp = max(n for n in jax_at if n in np_at)
    result["ratios"] = {
        "n": n_cmp,
        "jax_over_numpy": jax_at[n_cmp] / np_at[n_cmp],
        "jax_over_slsqp": jax_at[n_cmp] / result["slsqp"]["per_second"],
        "jax_over_cvxpy": (
            jax_at[n_cmp] / result["cvxpy"]["per_second"] if result["cvxpy"] else None
        ),
    }
    print("ratios:", result["ratios"])
    print("errors:", errors)

    from narset_jax.atomic import write_json

    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
