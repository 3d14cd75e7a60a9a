"""The neural ecology's training speed: vmapped regions against this machine's dense-matmul
peak, a Python loop over regions, and PyTorch's model-ensembling path.

    python -m benchmarks.neural --out benchmarks/results/neural.json

Every number comes from this one run on this one machine; speed claims are ratios against
baselines measured in the same run. The ecology is ``Neural()`` with its defaults (host
width 32, 4 seed slots, 10 SGD steps of 32 samples per window) on the ``steady`` scenario
(MNIST-1D, 4,000 samples). Sections:

* ``matmul_peak``: ``jax.jit`` of one ``[n, n] @ [n, n]`` float32 product (``--matmul-n``),
  ``2 n^3`` FLOPs: the machine's large dense-matmul rate under XLA.
* ``train``: the training of one window alone (``steps`` optimiser steps of every region:
  forward, side losses of seeds in TRAINING, backward, momentum update), one jitted
  ``vmap`` over regions, at each ``--sizes`` N. Every slot holds a seed (two in TRAINING,
  two BLENDING): the arrays have fixed shapes, so the work is the same whatever the stages.
  FLOPs are counted analytically from the shapes (matmuls and convolutions; forward plus
  twice for the backward), and XLA's own count (``cost_analysis``) is reported beside it:
  XLA counts a loop body once, so its figure is multiplied by ``steps`` (and, for
  ``train_blocked``, by the number of blocks).
* ``window``: the whole window (``Neural.step``: training, the validation loss and every
  seed's ablation probe, the governor, the agents, the test accuracy), same sizes.
  Evaluation is a large share of a window: the test split (1,000 samples) is scored every
  window and the validation split ``K + 1`` times.
* ``train_blocked``, ``window_blocked``: the same with ``Neural(block=--block)``: a
  ``lax.map`` over blocks of that many regions, each block ``vmap``ped.
* ``python_loop``: the same training (and window) written without ``vmap``: one jitted
  function for one region, called once per region from Python (``--loop-n`` regions,
  extrapolated linearly to the other sizes: the loop is linear in N by construction).
* ``torch``: when ``import torch`` works (the optional extra ``torch``), the same training
  with ``torch.func.vmap`` over ``torch.func.grad`` of a ``functional_call`` (PyTorch's
  model-ensembling path): same network, minibatches, side losses and momentum SGD.
* ``shape_probe``: the ``train`` row again at ``--probe-n`` regions for wider hosts and
  larger minibatches (``--probe-shapes``, ``hidden x batch``): how the share of the matmul
  peak depends on the size of each region's matrices, not on the number of regions.
* Per size: compile seconds (lower + compile), XLA's memory analysis per region (argument
  and temporary buffers), and the state's bytes per region.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from sims.ecologies.neural import Neural, load_neural_scenario
from sims.ecologies.neural import lifecycle as lc
from sims.ecologies.neural.data import N_CLASSES, SEQ_LEN
from sims.ecologies.stylised import Action

__all__ = ["main", "train_flops", "eval_flops"]


# ----------------------------------------------------------------------- FLOP counts
def _forward_flops(eco: Neural, b: int, side: bool) -> float:
    """Matmul and convolution FLOPs (2 per multiply-add) of one forward pass of ``b``
    samples; ``side`` adds the seeds' side logits (branches recomputed on the frozen host,
    every slot's logits through the output layer)."""
    a = eco.arch
    L, H, R, C, k, Lc = SEQ_LEN, a.hidden, a.seed_hidden, a.conv_channels, a.conv_kernel, \
        a.conv_len
    host = 2 * b * (L * H + H * N_CLASSES)
    conv = 2 * b * C * Lc * k + 2 * b * C * Lc * H
    mlp = 2 * b * H * R + 2 * b * R * H
    seeds = a.n_conv * conv + a.n_mlp * mlp
    f = host + seeds
    if side:
        f += seeds + a.n_slots * 2 * b * H * N_CLASSES
    return float(f)


def train_flops(eco: Neural) -> float:
    """Analytic FLOPs of one region's training window: ``steps`` x (forward with side
    logits) x 3 (the forward, and twice that for the backward)."""
    return 3.0 * eco.steps * _forward_flops(eco, eco.batch, side=True)


def eval_flops(eco: Neural, n_val: int, n_test: int) -> float:
    """Analytic FLOPs of one region's evaluation per window: ``K + 1`` validation passes
    (the loss and every seed's ablation) and one test pass."""
    return (eco.n_slots + 1) * _forward_flops(eco, n_val, False) + _forward_flops(
        eco, n_test, False)


# ----------------------------------------------------------------------- JAX set-up
def _state(eco, sc, n):
    """A fresh state of ``n`` regions with every slot holding a live seed (two in
    TRAINING, the rest BLENDING at alpha 0.5), so every branch trains."""
    s = jax.jit(eco.init, static_argnums=1)(jax.random.key(0), n, sc)
    K = eco.n_slots
    stage = jnp.where(jnp.arange(K) < 2, lc.TRAINING, lc.BLENDING).astype(jnp.int32)
    stage = jnp.broadcast_to(stage, (n, K))
    alpha = jnp.where(stage == lc.BLENDING, 0.5, 0.0).astype(s.alpha.dtype)
    return eqx.tree_at(lambda q: (q.stage, q.alpha), s, (stage, alpha))


def _train_one(eco, sc):
    """One region's training window (unbatched): the ecology's own training routine."""
    every = jnp.ones((N_CLASSES,), bool)

    def f(s, t):
        key = jax.random.fold_in(jax.random.wrap_key_data(s.rkey), t)
        a0 = lc.effective_alpha(s.stage, s.alpha, s.sedated)
        live = lc.in_stages(s.stage, lc.LIVE)
        net, mom, anom, nonf = eco._train(sc, s, key, s.lr, s.perm, 0.0, a0,
                                          s.stage == lc.TRAINING, live, every, every)
        return net, mom, anom + nonf

    return f


def _timed_compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _memory(compiled, n):
    m = compiled.memory_analysis()
    if m is None:
        return None
    return {"argument_bytes_per_region": m.argument_size_in_bytes / n,
            "temp_bytes_per_region": m.temp_size_in_bytes / n,
            "output_bytes_per_region": m.output_size_in_bytes / n}


def _xla_flops(compiled):
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def _act(n, x=1.0, tier=2):
    f = jnp.full((n,), x, jnp.float32)
    i = jnp.full((n,), tier, jnp.int32)
    return Action(f, f, i, i)


def matmul_peak(n: int, repeats: int) -> dict:
    k1, k2 = jax.random.split(jax.random.key(1))
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    sec = _common.best_time(f, a, b, repeats=repeats, min_time=0.3)
    return {"n": n, "seconds": sec, "flops": 2.0 * n**3, "flop_per_second": 2.0 * n**3 / sec}


def bench_train(eco, sc, sizes, repeats, block=0):
    """The training window of every region: one ``vmap`` (``block`` 0) or ``lax.map`` over
    blocks of ``block`` regions, each block ``vmap``ped (as ``Neural(block=...)``)."""
    rows = []
    per = train_flops(eco)
    one = _train_one(eco, sc)
    if block:
        def fn(s, t):
            return jax.lax.map(lambda r: one(r, t), s, batch_size=block)
    else:
        fn = jax.vmap(one, in_axes=(0, None))
    for n in sizes:
        s = _state(eco, sc, n)
        t = jnp.int32(1)
        compiled, comp_s = _timed_compile(fn, s, t)
        sec = _common.best_time(compiled, s, t, repeats=repeats)
        # XLA counts a loop body once: the scan of steps, and lax.map's loop over blocks.
        xla = _xla_flops(compiled) * eco.steps * (n // block if block else 1)
        rows.append({
            "n": n, "seconds": sec, "compile_seconds": comp_s,
            "region_windows_per_second": n / sec,
            "flops_analytic": per * n, "flops_xla_body_times_steps": xla,
            "flop_per_second": per * n / sec,
            "state_bytes_per_region": sum(x.nbytes for x in jax.tree.leaves(s)) / n,
            "memory": _memory(compiled, n),
        })
        print(f"train block={block} n={n}: {sec * 1e3:.1f} ms/window, "
              f"{n / sec:.0f} region-windows/s, {per * n / sec / 1e9:.2f} GFLOP/s "
              f"(compile {comp_s:.1f} s)", flush=True)
    return rows


def bench_window(eco, sc, sizes, repeats):
    rows = []
    d = sc.data
    per = train_flops(eco) + eval_flops(eco, d.x_val.shape[0], d.x_test.shape[0])
    for n in sizes:
        s = _state(eco, sc, n)
        a, t = _act(n), jnp.int32(1)
        compiled, comp_s = _timed_compile(eco.step, sc, s, a, t)
        sec = _common.best_time(compiled, sc, s, a, t, repeats=repeats)
        rows.append({
            "n": n, "seconds": sec, "compile_seconds": comp_s,
            "region_windows_per_second": n / sec, "flops_analytic": per * n,
            "flop_per_second": per * n / sec, "memory": _memory(compiled, n),
        })
        print(f"window block={eco.block} n={n}: {sec * 1e3:.1f} ms, {n / sec:.0f} region-windows/s "
              f"(compile {comp_s:.1f} s)", flush=True)
    return rows


def bench_loop(eco, sc, n_loop, repeats):
    """One jitted unbatched function per region, called from a Python loop."""
    s = _state(eco, sc, n_loop)
    regions = [jax.tree.map(lambda x, i=i: x[i], s) for i in range(n_loop)]
    one = jax.jit(_train_one(eco, sc))
    t = jnp.int32(1)
    jax.block_until_ready(one(regions[0], t))

    def loop_train():
        return [one(r, t) for r in regions]

    sec = _common.best_time(loop_train, repeats=repeats)
    # The whole window: the ecology's step at N = 1, region by region.
    singles = [jax.tree.map(lambda x, i=i: x[i:i + 1], s) for i in range(n_loop)]
    step = jax.jit(eco.step)
    a, t = _act(1), jnp.int32(1)
    jax.block_until_ready(step(sc, singles[0], a, t))

    def loop_window():
        return [step(sc, r, a, t) for r in singles]

    sec_w = _common.best_time(loop_window, repeats=repeats)
    return {"n": n_loop,
            "train": {"seconds": sec, "region_windows_per_second": n_loop / sec,
                      "flop_per_second": train_flops(eco) * n_loop / sec},
            "window": {"seconds": sec_w, "region_windows_per_second": n_loop / sec_w}}


# ----------------------------------------------------------------------- PyTorch
def bench_torch(eco, sc, sizes, repeats, threads):
    """The same training window with torch.func.vmap + functional_call (or the reason it
    did not run)."""
    try:
        import torch
        from torch import nn
        from torch.func import functional_call, grad, vmap
    except Exception as err:  # noqa: BLE001 - any failure to import means "not installed"
        return {"skipped": f"import torch failed: {type(err).__name__}: {err}"}
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    a = eco.arch
    L, H, R, C, k, st = SEQ_LEN, a.hidden, a.seed_hidden, a.conv_channels, a.conv_kernel, \
        a.conv_stride
    Kc, Km, K, Lc, B = a.n_conv, a.n_mlp, a.n_slots, a.conv_len, eco.batch

    class Region(nn.Module):
        def __init__(self):
            super().__init__()
            z = torch.zeros
            self.W1, self.b1 = nn.Parameter(z(L, H)), nn.Parameter(z(H))
            self.Wo, self.bo = nn.Parameter(z(H, N_CLASSES)), nn.Parameter(z(N_CLASSES))
            self.Wc, self.bc = nn.Parameter(z(Kc, C, 1, k)), nn.Parameter(z(Kc, C))
            self.P = nn.Parameter(z(Kc, C * Lc, H))
            self.A, self.a = nn.Parameter(z(Km, H, R)), nn.Parameter(z(Km, R))
            self.B = nn.Parameter(z(Km, R, H))

        def branches(self, x, h, Wc, bc, P, A, a_, Bm):
            out = []
            for j in range(Kc):
                f = F.relu(F.conv1d(x[:, None, :], Wc[j], bc[j], stride=st))
                out.append(f.reshape(f.shape[0], -1) @ P[j])
            for j in range(Km):
                out.append(F.relu(h @ A[j] + a_[j]) @ Bm[j])
            return torch.stack(out)  # [K, B, H]

        def forward(self, x, alpha, hmask):
            h = F.relu(x @ self.W1 + self.b1) * hmask
            seeds = (self.Wc, self.bc, self.P, self.A, self.a, self.B)
            br = self.branches(x, h, *seeds)
            hid = h + torch.einsum("k,kbh->bh", alpha, br)
            logits = hid @ self.Wo + self.bo
            br_iso = self.branches(x, h.detach(), *seeds)
            side = (hid.detach()[None] + br_iso) @ self.Wo.detach() + self.bo.detach()
            return logits, side

    model = Region()
    d = sc.data
    xs = torch.from_numpy(np.array(d.x_train))
    ys = torch.from_numpy(np.array(d.y_train)).long()

    def loss(params, x, y, alpha, hmask, side_mask):
        logits, side = functional_call(model, params, (x, alpha, hmask))
        main = F.cross_entropy(logits, y)
        side_l = F.cross_entropy(side.reshape(-1, N_CLASSES), y.repeat(K),
                                 reduction="none").reshape(K, -1).mean(-1)
        return main + (side_l * side_mask).sum()

    g = vmap(grad(loss))

    def make_window(n):
        """The training window of ``n`` regions (their state as the JAX rows start)."""
        s = _state(eco, sc, n)
        params = {f: torch.from_numpy(np.array(getattr(s.net, f))) for f in
                  ("W1", "b1", "Wo", "bo", "Wc", "bc", "P", "A", "a", "B")}
        mom = {f: torch.zeros_like(v) for f, v in params.items()}
        lr = torch.from_numpy(np.array(s.lr))
        alpha = torch.from_numpy(np.array(s.alpha))
        hmask = torch.from_numpy(np.array(s.hmask))
        side_mask = torch.from_numpy(np.array(s.stage == lc.TRAINING)).float()
        perm = torch.from_numpy(np.array(s.perm)).long()
        shift = torch.from_numpy(np.array(s.shift)).long()
        noise = torch.from_numpy(np.array(s.noise))
        gen = torch.Generator().manual_seed(0)
        cols = (torch.arange(L)[None, :] - shift[:, None]) % L  # circular shift, [N, L]

        def window():
            nonlocal params, mom
            for _ in range(eco.steps):
                idx = torch.randint(0, xs.shape[0], (n, B), generator=gen)
                x = torch.gather(xs[idx], 2, cols[:, None, :].expand(n, B, L))
                x = x + noise[:, None, None] * torch.randn(n, B, L, generator=gen)
                y = torch.gather(perm, 1, ys[idx])
                gr = g(params, x, y, alpha, hmask, side_mask)
                mom = {f: 0.9 * mom[f] + gr[f] for f in params}
                params = {f: params[f] - lr.view(-1, *[1] * (params[f].ndim - 1)) * mom[f]
                          for f in params}
            return params

        return window

    rows = []
    for n in sizes:
        window = make_window(n)
        t0 = time.perf_counter()
        window()
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            window()
            best = min(best, time.perf_counter() - t0)
        rows.append({"n": n, "seconds": best, "first_call_seconds": first,
                     "region_windows_per_second": n / best,
                     "flop_per_second": train_flops(eco) * n / best})
        print(f"torch n={n}: {best * 1e3:.1f} ms/window, {n / best:.0f} region-windows/s",
              flush=True)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}


# ----------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/neural.json")
    p.add_argument("--sizes", default="16,64,256,1024")
    p.add_argument("--window-sizes", default="64,256")
    p.add_argument("--torch-sizes", default="16,64")
    p.add_argument("--loop-n", type=int, default=32)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--probe-n", type=int, default=256)
    p.add_argument("--probe-shapes", default="64x64,128x128")
    p.add_argument("--skip", default="", help="comma list of: window, loop, torch, probe")
    args = p.parse_args(argv)

    def ints(text):
        return [int(float(v)) for v in text.split(",") if v]

    sizes, skip = ints(args.sizes), set(filter(None, args.skip.split(",")))
    eco = Neural()
    sc = eco.prepare(load_neural_scenario("steady"))
    result = {"machine": _common.machine(), "scenario": "steady", "dtype": "float32",
              "ecology": {f: getattr(eco, f) for f in (
                  "hidden", "n_slots", "seed_hidden", "conv_channels", "conv_kernel",
                  "conv_stride", "steps", "batch")},
              "n_train": int(sc.data.x_train.shape[0]), "n_val": int(sc.data.x_val.shape[0]),
              "n_test": int(sc.data.x_test.shape[0]),
              "train_flops_per_region_window": train_flops(eco),
              "eval_flops_per_region_window": eval_flops(
                  eco, sc.data.x_val.shape[0], sc.data.x_test.shape[0]),
              "load_average_start": os.getloadavg()}
    result["matmul_peak"] = matmul_peak(args.matmul_n, args.repeats)
    print(f"matmul peak: {result['matmul_peak']['flop_per_second'] / 1e9:.1f} GFLOP/s",
          flush=True)
    result["train"] = bench_train(eco, sc, sizes, args.repeats)
    if args.block:
        result["block"] = args.block
        result["train_blocked"] = bench_train(eco, sc, sizes, args.repeats, args.block)
    if "window" not in skip:
        result["window"] = bench_window(eco, sc, ints(args.window_sizes), args.repeats)
        if args.block:
            result["window_blocked"] = bench_window(
                Neural(block=args.block), sc, ints(args.window_sizes), args.repeats)
    if "loop" not in skip:
        result["python_loop"] = bench_loop(eco, sc, args.loop_n, args.repeats)
    if "torch" not in skip:
        result["torch"] = bench_torch(eco, sc, ints(args.torch_sizes), args.repeats,
                                      os.cpu_count() or 1)
    if "probe" not in skip:
        probe = []
        for shape in filter(None, args.probe_shapes.split(",")):
            h, b = (int(v) for v in shape.split("x"))
            e = Neural(hidden=h, batch=b)
            row = bench_train(e, sc, [args.probe_n], args.repeats)[0]
            probe.append(dict(row, hidden=h, batch=b, flops_per_region_window=train_flops(e)))
        result["shape_probe"] = probe
    # The peak once more at the end: this shared VM's speed drifts during a run.
    result["matmul_peak_end"] = matmul_peak(args.matmul_n, args.repeats)

    peak = max(result["matmul_peak"]["flop_per_second"],
               result["matmul_peak_end"]["flop_per_second"])
    ratios = {}
    for key in ("train", "train_blocked"):
        for r in result.get(key, []):
            ratios[f"{key}_flops_over_matmul_peak_at_{r['n']}"] = r["flop_per_second"] / peak
        big = [r for r in result.get(key, []) if r["n"] >= 256]
        if big:
            best = max(r["flop_per_second"] / peak for r in big)
            ratios[f"{key}_goal_30pct_of_peak_at_n_ge_256_met"] = bool(best >= 0.3)
    for key in ("train", "window"):
        plain = {r["n"]: r for r in result.get(key, [])}
        for r in result.get(f"{key}_blocked", []):
            if r["n"] in plain:
                ratios[f"{key}_blocked_over_vmap_at_{r['n']}"] = (
                    plain[r["n"]]["seconds"] / r["seconds"])
    if "python_loop" in result:
        lp = result["python_loop"]
        for r in result["train"]:
            ratios[f"vmap_over_python_loop_train_at_{r['n']}"] = (
                r["region_windows_per_second"] / lp["train"]["region_windows_per_second"])
        for r in result.get("window", []):
            ratios[f"vmap_over_python_loop_window_at_{r['n']}"] = (
                r["region_windows_per_second"] / lp["window"]["region_windows_per_second"])
        for key in ("train", "window"):
            for r in result.get(f"{key}_blocked", []):
                ratios[f"blocked_over_python_loop_{key}_at_{r['n']}"] = (
                    r["region_windows_per_second"] / lp[key]["region_windows_per_second"])
    tr = result.get("torch", {})
    train_at = {r["n"]: r for r in result["train"]}
    blocked_at = {r["n"]: r for r in result.get("train_blocked", [])}
    for r in tr.get("rows", []):
        if r["n"] in train_at:
            ratios[f"jax_over_torch_vmap_train_at_{r['n']}"] = (
                train_at[r["n"]]["region_windows_per_second"] / r["region_windows_per_second"])
        if r["n"] in blocked_at:
            ratios[f"jax_blocked_over_torch_vmap_train_at_{r['n']}"] = (
                blocked_at[r["n"]]["region_windows_per_second"]
                / r["region_windows_per_second"])
    for r in result.get("shape_probe", []):
        ratios[f"train_flops_over_matmul_peak_hidden{r['hidden']}_batch{r['batch']}_at_"
               f"{r['n']}"] = r["flop_per_second"] / peak
    rows = result["train"]
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        ratios[f"train_seconds_ratio_{hi['n']}_over_{lo['n']}_per_size_ratio"] = (
            hi["seconds"] / lo["seconds"]) / (hi["n"] / lo["n"])
    result["ratios"] = ratios
    result["load_average_end"] = os.getloadavg()
    print("ratios:", json.dumps(ratios, indent=1))

    from narset_jax.atomic import write_json

    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
