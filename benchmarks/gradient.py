"""Cost of a gradient step through a whole rollout, relative to a forward rollout, and its
peak memory with and without ``jax.checkpoint`` around the scan body.

    python -m benchmarks.gradient --regions 4096 --steps 500 \\
        --out benchmarks/results/gradient.json

Each variant runs in its own child process (so its peak resident memory is its own), one
after another in the same invocation, at the same N, T, scenario and batch:

* ``forward_soft``: the tuning loss, forward only (soft hysteresis), one rollout;
* ``forward_hard``: ``sims.rollout`` with the hard controller, one rollout;
* ``grad_remat``: one gradient step (``sims.tune.loss_and_grad`` plus the adam
  update) with ``jax.checkpoint`` around each simulated window;
* ``grad_plain``: the same without ``jax.checkpoint``;
* ``grad_smoothed``: one step of ``narset tune``'s default estimator
  (``sims.tune.estimators.smoothed_grad``: an antithetic pair of hard rollouts with
  per-region perturbations, the score function, plus the adam update);
* ``interleaved``: the headline ratios. One child times ``forward_soft``, ``forward_hard``,
  ``grad_remat`` and ``grad_smoothed`` in turn, round after round, and reports the median
  round's ratios: the separate children above run minutes apart, and this VM's speed
  drifts between them.

``--variants ctl_forward,ctl_grad,sim_forward,sim_grad`` breaks the cost down: the
controller alone (``narset_rollout`` on synthetic ``[T, N]`` telemetry) and the ecology
alone (``sims.sim_step`` under a params-dependent action), forward and gradient.

Reported per variant: compile seconds, best-of-``--repeats`` wall seconds, XLA's memory
analysis of the compiled program (argument, output and temporary buffers; ``peak_bytes`` is
argument + output + temp - alias), and the process's peak resident set size
(``ru_maxrss``) against its size just before compiling. Ratios: gradient step over forward
rollout (soft, the same maths), and over the hard forward rollout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("forward_soft", "forward_hard", "grad_remat", "grad_plain", "grad_smoothed",
            "interleaved")
# Where the gradient's time goes (not run by default): the controller alone on synthetic
# telemetry, and the ecology alone under an action that depends on the params, each
# forward and gradient (with jax.checkpoint per window, like grad_remat).
BREAKDOWN = ("ctl_forward", "ctl_grad", "sim_forward", "sim_grad")


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _source_hash() -> str:
    """A hash of the library and simulator sources a child ran, so that a comparison across
    children is only made when they ran the same code."""
    import hashlib

    h = hashlib.sha256()
    root = HERE.parent
    for path in sorted([*root.glob("narset_jax/**/*.py"), *root.glob("sims/**/*.py"),
                        *root.glob("sims/scenarios/*.toml")]):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:  # pragma: no cover - backend without memory analysis
        return {}
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes", 0))
        for k in ("argument", "output", "temp", "alias", "generated_code")
    }
    out["peak_bytes"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def _breakdown(variant, N, T, base, raw, scenario):
    """The controller-only and ecology-only programs (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import sims
    from narset_jax.step import init_state, narset_rollout
    from narset_jax.telemetry import Telemetry
    from sims import tune

    remat = variant.endswith("_grad")
    if variant.startswith("ctl"):
        rng = np.random.default_rng(0)
        crisis = (rng.uniform(size=(T, N)) < 0.1).astype(np.float32)
        tel = Telemetry(
            loss=jnp.asarray(1 + 0.02 * rng.standard_normal((T, N)), jnp.float32),
            rollbacks=jnp.asarray(rng.uniform(0, 0.3, (T, N)) * (1 + 2 * crisis), jnp.float32),
            anomalies=jnp.asarray(rng.uniform(0, 1, (T, N)) * (1 + 2 * crisis), jnp.float32),
            nonfinite=jnp.asarray(0.3 * crisis, jnp.float32),
            lstm_health=jnp.asarray(rng.uniform(2, 8, (T, N)) + 5 * crisis, jnp.float32),
            growth_ratio=jnp.asarray(rng.uniform(1, 6, (T, N)), jnp.float32),
            churn=jnp.asarray(rng.uniform(0, 8, (T, N)), jnp.float32),
            alpha_shock=jnp.asarray(rng.uniform(0, 0.2, (T, N)), jnp.float32),
            active_seeds=jnp.asarray(rng.uniform(0, 8, (T, N)), jnp.float32),
            fossilised_seeds=jnp.asarray(rng.uniform(0, 8, (T, N)), jnp.float32),
            valid=jnp.asarray(rng.uniform(size=(T, N)) > 0.05),
            boundary=jnp.asarray(rng.uniform(size=(T, N)) > 0.3),
        )

        def loss(raw, tel):
            p = tune.to_params(raw, base)
            _, d = narset_rollout(p, init_state(N, jnp.float32), tel, checkpoint=remat)
            return jnp.mean(d.x_T * d.x_E + d.spent + d.mode_weight)

        args = (raw, tel)
    else:
        key = jax.random.key(0)
        sc = scenario.without_metadata().astype(jnp.float32)

        def loss(raw, key):
            p = tune.to_params(raw, base)
            s0 = sims.init(key, N, sc, jnp.float32)
            x = jnp.full((N,), 1.0, jnp.float32)

            def body(s, t):
                a = sims.Action(x_T=x * p.gain_T_consol, x_E=x * p.gain_E_consol,
                                tier_T=x * p.beta * 2, tier_E=x * (1 - p.theta_exit) * 2)
                s, tel = sims.sim_step(sc, s, a, t, relax="soft")
                return s, None

            if remat:
                body = jax.checkpoint(body)
            s, _ = jax.lax.scan(body, s0, jnp.arange(T, dtype=jnp.int32))
            return jnp.mean(s.loss + s.health)

        args = (raw, key)
    fn = jax.jit(jax.grad(loss) if variant.endswith("_grad") else loss)
    return fn, args


def child(args) -> dict:
    """Run one variant and return its measurements."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import sims
    from narset_jax.params import NarsetParams
    from sims import tune

    variant = args.child
    N, T = args.regions, args.steps
    scenario = sims.load_scenario(args.scenario)
    base = NarsetParams(hysteresis="soft").astype(jnp.float32)
    raw = tune.from_params(base, jnp.float32)
    weights = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), sims.DEFAULT_WEIGHTS)
    stacked = tune.stack_scenarios([scenario]).astype(jnp.float32)
    keys = tune.batch_keys(tune.run_keys(0, tune.STREAM_TRAIN), 0, 1, args.batch)
    temp = jnp.float32(1.0)
    rss_before = _maxrss_bytes()
    source = _source_hash()
    if variant == "interleaved":
        return _interleaved(args, N, T, base, raw, weights, stacked, keys, temp, scenario, source)

    t0 = time.perf_counter()
    if variant in BREAKDOWN:
        fn, call_args = _breakdown(variant, N, T, base, raw, scenario)
        compiled = fn = fn.lower(*call_args).compile()
    else:
        fn, call_args, compiled = _program(
            variant, N, T, base, raw, weights, stacked, keys, temp, scenario
        )
    memory = _memory(compiled)
    jax.block_until_ready(fn(*call_args))  # warm up (and compile the small update)
    compile_s = time.perf_counter() - t0
    times = []
    out = None
    for _ in range(args.repeats):
        t1 = time.perf_counter()
        out = jax.block_until_ready(fn(*call_args))
        times.append(time.perf_counter() - t1)
    result = {
        "variant": variant,
        "compile_s": compile_s,
        "seconds": min(times),
        "all_seconds": times,
        "memory_analysis": memory,
        "maxrss_bytes": _maxrss_bytes(),
        "rss_before_compile_bytes": rss_before,
        "source_hash": source,
    }
    if source != _source_hash():
        result["source_changed_during_run"] = True
    if variant == "grad_smoothed":
        (_, _), grad, pool_grad = out
        result["grad"] = {k: float(v) for k, v in grad.items()}
        result["grad_log_pool"] = float(pool_grad)
    elif variant.startswith("grad_"):
        (_, _), grad, gnorm = out
        loss_value = compiled(raw, base, stacked, keys, weights, temp)[0]
        result["value"] = float(loss_value)
        result["grad_norm"] = float(gnorm)
        result["grad"] = {k: float(v) for k, v in grad.items()}
    elif isinstance(out, dict):
        result["grad"] = {k: float(v) for k, v in out.items()}
    else:
        result["value"] = np.asarray(out).tolist()
    return result


def _program(variant, N, T, base, raw, weights, stacked, keys, temp, scenario):
    """A compiled timed program: ``(fn, call_args, compiled)`` for ``forward_soft``,
    ``forward_hard``, ``grad_remat`` or ``grad_plain`` (a gradient step is
    ``tune.loss_and_grad`` plus the adam update; ``compiled`` is the part whose memory is
    analysed)."""
    import jax
    import jax.numpy as jnp
    import optax

    import sims
    from narset_jax.params import NarsetParams
    from sims import tune

    if variant == "grad_smoothed":
        from sims.tune import estimators

        hard_base = NarsetParams().astype(jnp.float32)
        cfg = tune.TuneConfig(N, T)
        opt = tune.make_optimizer(0.05, 1.0)
        nkeys = estimators.noise_keys(0, 0, 1, keys.shape[1])
        sigma = jnp.float32(estimators.SMOOTHING_SIGMA)
        compiled = estimators.smoothed_samples.lower(
            raw, hard_base, stacked, keys, nkeys, weights, sigma, cfg=cfg, perturb_pool=True
        ).compile()

        @jax.jit
        def update_s(raw, opt_state, grad):
            updates, opt_state = opt.update(grad, opt_state, raw)
            return optax.apply_updates(raw, updates), opt_state

        def step_s(raw, opt_state, keys):
            out = estimators.smoothed_grad(raw, hard_base, stacked, keys, nkeys, weights,
                                           sigma, cfg=cfg)
            return update_s(raw, opt_state, out["grad"]), out["grad"], out["grad_log_pool"]

        return step_s, (raw, opt.init(raw), keys), compiled
    if variant == "forward_hard":
        p = NarsetParams().astype(jnp.float32)
        sc = scenario.without_metadata().astype(jnp.float32)
        fn = jax.jit(
            lambda p, sc, ks: jax.vmap(
                lambda k: sims.objective(sims.rollout(p, sc, k, N, T).metrics, weights)
            )(ks)
        )
        call_args = (p, sc, keys[0])
    elif variant == "forward_soft":
        cfg = tune.TuneConfig(N, T, checkpoint=False)
        fn = jax.jit(
            lambda raw, keys: tune.batch_loss(raw, base, stacked, keys, weights, temp, cfg)[0]
        )
        call_args = (raw, keys)
    else:
        cfg = tune.TuneConfig(N, T, checkpoint=variant == "grad_remat")
        opt = tune.make_optimizer(0.05, 1.0)
        compiled = tune.loss_and_grad.lower(
            raw, base, stacked, keys, weights, temp, cfg=cfg
        ).compile()

        @jax.jit
        def update(raw, opt_state, grad):  # the tuner's adam update (sims.tune.training)
            updates, opt_state = opt.update(grad, opt_state, raw)
            return optax.apply_updates(raw, updates), opt_state

        def step(raw, opt_state, keys):
            _, _, g, gn = compiled(raw, base, stacked, keys, weights, temp)
            return update(raw, opt_state, g), g, gn

        return step, (raw, opt.init(raw), keys), compiled
    compiled = fn.lower(*call_args).compile()
    return compiled, call_args, compiled


def _interleaved(args, N, T, base, raw, weights, stacked, keys, temp, scenario, source) -> dict:
    """The headline ratio, timed in one process: the soft forward rollout, the hard one and
    the checkpointed gradient step (the same programs as their own variants), called in
    turn, round after round, so that the machine's drift (this shared VM's speed changes by
    tens of percent from minute to minute, and between the variants' child processes) hits
    all three alike. Each round gives a ratio; the median round is reported."""
    import statistics

    import jax

    calls = {}
    for v in ("forward_soft", "forward_hard", "grad_remat", "grad_smoothed"):
        fn, call_args, _ = _program(v, N, T, base, raw, weights, stacked, keys, temp, scenario)
        calls[v] = lambda fn=fn, call_args=call_args: fn(*call_args)
    for f in calls.values():
        jax.block_until_ready(f())
    times = {k: [] for k in calls}
    for _ in range(2 * args.repeats):
        for k, f in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
    per_round = {
        f"{g}/{k}": [a / b for a, b in zip(times[g], times[k])]
        for g in ("grad_remat", "grad_smoothed") for k in ("forward_soft", "forward_hard")
    }
    return {
        "variant": "interleaved",
        "all_seconds": times,
        "seconds": min(times["grad_remat"]),
        "ratio_per_round": per_round,
        "ratio_median": {k: statistics.median(v) for k, v in per_round.items()},
        "memory_analysis": {},
        "compile_s": None,
        "maxrss_bytes": _maxrss_bytes(),
        "source_hash": source,
    }


def horizon_study(args) -> dict:
    """How trustworthy is the gradient over a long horizon? For each horizon ``T`` (and
    each truncation window), the gradient in float32 and in float64 on the same seeds:
    if rounding differences (about 1e-7 relative) grow into large gradient differences,
    the gradient is chaotic. Also reports the cosine between truncated and full gradients.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import sims
    from narset_jax.params import NarsetParams
    from sims import tune

    scenario = sims.load_scenario(args.scenario)
    keys = tune.batch_keys(tune.run_keys(0, tune.STREAM_TRAIN), 0, 1, args.batch)
    rows = []
    grads = {}
    for T in [int(t) for t in args.horizons.split(",")]:
        for W in [None] + [int(w) for w in args.windows.split(",") if int(w) < T]:
            for dt in ("float32", "float64"):
                dtype = jnp.dtype(dt).type
                base = NarsetParams(hysteresis="soft").astype(dtype)
                raw = tune.from_params(base, dtype)
                weights = jax.tree.map(partial(jnp.asarray, dtype=dtype), sims.DEFAULT_WEIGHTS)
                stacked = tune.stack_scenarios([scenario]).astype(dtype)
                cfg = tune.TuneConfig(args.regions, T, truncate=W, checkpoint=True, dtype=dt)
                t0 = time.perf_counter()
                loss, _, g, gn = tune.loss_and_grad(
                    raw, base, stacked, keys, weights, dtype(1.0), cfg=cfg
                )
                g = np.array([float(g[n]) for n in tune.TUNED])
                grads[(T, W, dt)] = g
                rows.append({"steps": T, "truncate": W, "dtype": dt, "loss": float(loss),
                             "grad_norm": float(gn), "seconds": time.perf_counter() - t0})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for row in rows:
        T, W, dt = row["steps"], row["truncate"], row["dtype"]
        g64 = grads[(T, W, "float64")]
        g = grads[(T, W, dt)]
        row["rel_diff_vs_float64"] = float(np.linalg.norm(g - g64) / np.linalg.norm(g64))
        full = grads[(T, None, dt)]
        row["cosine_vs_full"] = float(g @ full / (np.linalg.norm(g) * np.linalg.norm(full)))
    return {"regions": args.regions, "batch": args.batch, "scenario": args.scenario,
            "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regions", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--scenario", default="crisis")
    ap.add_argument("--batch", type=int, default=1, help="seeds per step (default 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--child", default=None, choices=VARIANTS + BREAKDOWN,
                    help=argparse.SUPPRESS)
    ap.add_argument("--horizon-study", action="store_true",
                    help="instead: gradient norm, float32-vs-float64 agreement and "
                    "truncated-vs-full cosine over --horizons and --windows")
    ap.add_argument("--horizons", default="100,500")
    ap.add_argument("--windows", default="50")
    args = ap.parse_args(argv)
    if args.horizon_study:
        from benchmarks import _common

        out = {"machine": _common.machine(), "horizon_study": horizon_study(args)}
        text = json.dumps(out, indent=2, sort_keys=True)
        if args.out:
            from narset_jax.atomic import write_text

            write_text(args.out, text + "\n")
        else:
            print(text)
        return 0
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    from benchmarks import _common

    results = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "benchmarks.gradient", "--child", variant,
               "--regions", str(args.regions), "--steps", str(args.steps),
               "--scenario", args.scenario, "--batch", str(args.batch),
               "--repeats", str(args.repeats)]
        print(f"[{variant}] running ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(),
                              cwd=HERE.parent)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"variant {variant} failed ({proc.returncode})")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        res = json.loads(line[len("RESULT "):])
        res["process_s"] = time.perf_counter() - t0
        results[variant] = res
        mem = res["memory_analysis"]
        if variant == "interleaved":
            print(f"[interleaved] median of rounds: {res['ratio_median']}", file=sys.stderr)
            continue
        print(
            f"[{variant}] {res['seconds']:.3f} s (compile {res['compile_s']:.1f} s); XLA peak "
            f"{mem.get('peak_bytes', 0) / 2**30:.3f} GiB (temp {mem.get('temp', 0) / 2**30:.3f}"
            f" GiB); maxrss {res['maxrss_bytes'] / 2**30:.3f} GiB",
            file=sys.stderr, flush=True,
        )

    import jax

    summary = {
        "machine": _common.machine(),
        "config": {"regions": args.regions, "steps": args.steps, "scenario": args.scenario,
                   "batch": args.batch, "repeats": args.repeats, "dtype": "float32",
                   "jax_backend": jax.default_backend()},
        "variants": results,
    }
    ratios = {}
    fwd = results.get("forward_soft", {}).get("seconds")
    fwd_hard = results.get("forward_hard", {}).get("seconds")
    for g in ("grad_remat", "grad_plain", "grad_smoothed"):
        if g in results and fwd:
            ratios[f"{g}/forward_soft"] = results[g]["seconds"] / fwd
        if g in results and fwd_hard:
            ratios[f"{g}/forward_hard"] = results[g]["seconds"] / fwd_hard
    if "interleaved" in results:
        for k, v in results["interleaved"]["ratio_median"].items():
            ratios[f"interleaved {k}"] = v
    for part in ("ctl", "sim"):
        f, g = results.get(f"{part}_forward"), results.get(f"{part}_grad")
        if f and g:
            ratios[f"{part}_grad/{part}_forward"] = g["seconds"] / f["seconds"]
    summary["ratios"] = ratios
    hashes = {r.get("source_hash") for r in results.values()}
    summary["same_source_in_every_variant"] = len(hashes) == 1 and not any(
        r.get("source_changed_during_run") for r in results.values()
    )
    if not summary["same_source_in_every_variant"]:
        print("warning: the sources changed between variants; ratios and gradient "
              "comparisons are not meaningful", file=sys.stderr)
    if "grad_remat" in results and "grad_plain" in results:
        a, b = results["grad_remat"]["grad"], results["grad_plain"]["grad"]
        scale = max(max(abs(v) for v in b.values()), 1e-30)
        summary["remat_max_abs_grad_diff_over_max_grad"] = max(
            abs(a[k] - b[k]) for k in a
        ) / scale
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}", file=sys.stderr)
    text = json.dumps(summary, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from narset_jax.atomic import write_text

        write_text(args.out, text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
