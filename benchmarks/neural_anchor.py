"""The MNIST-1D anchors: a host trained alone, and a region that grows convolutional seeds,
against the MNIST-1D README's test accuracies (logistic regression 32 %, MLP 68 %, CNN 94 %).

    python -m benchmarks.neural_anchor --out benchmarks/results/neural_anchor.json

The data are mnist1d's default dataset (``make_dataset`` with ``get_dataset_args()``: 4,000
samples, 3,200 train and 800 test), seen through the *default variant*: no label
permutation, no input shift, no input noise, one step size (the ``steady`` scenario with
``permute``, ``max_shift``, ``noise`` and the spreads set to 0). The last ``n_val`` (256)
training samples are the ecology's validation split, so the networks train on 2,944.

Two groups of ``--regions`` regions each, with the same region ids (so the same
initialisations and minibatches) and the ecology's own training (``Neural.step``, SGD with
momentum, ``--steps`` steps of ``--batch`` per window) for ``--windows`` windows:

* **host**: no authority (``x_T = 0``, ``tier_T = 0``): the host MLP (one hidden layer of
  ``--hidden`` units) trains alone, no seed is ever germinated;
* **grown**: Tamiyo with full authority (``x_T = 1``, ``tier_T = 2``) and her default rules:
  on a plateau she germinates into the lowest dormant slot (the conv slots come first),
  trains, blends and fossilises seeds that keep their gain. Emrakul has no authority.

Reported per group: the test accuracy (mnist1d's test split) at the end (the mean over the
last 10 windows, per region), its mean and range over regions, the curve every
``--every`` windows, and for the grown group the slots' final stages (conv or MLP). Not
tuned: the ecology's defaults and the shipped scenario, with only the variant switched off.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from sims.ecologies.neural import Neural, load_neural_scenario
from sims.ecologies.neural import lifecycle as lc
from sims.ecologies.stylised import Action

__all__ = ["PAPER", "main"]

# greydanus/mnist1d README, test accuracy on the default dataset.
PAPER = {"logistic_regression": 0.32, "mlp": 0.68, "cnn": 0.94}


def default_variant():
    """The shipped ``steady`` scenario with every per-region variation switched off."""
    return load_neural_scenario("steady", permute=0.0, max_shift=0, noise=0.0,
                                spread_noise=0.0, spread_lr=0.0)


def run(eco: Neural, sc, regions: int, windows: int, every: int, seed: int):
    """Both groups in one batch (``2 * regions`` regions; ids repeat). Returns the test
    accuracy curve ``[windows, 2 * regions]`` and the final state."""
    ids = jnp.asarray(list(range(regions)) * 2, jnp.int32)
    n = ids.shape[0]
    grow = jnp.arange(n) >= regions
    x_T = jnp.where(grow, 1.0, 0.0).astype(jnp.float32)
    tier_T = jnp.where(grow, 2, 0).astype(jnp.int32)
    zero_f, zero_i = jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32)
    action = Action(x_T, zero_f, tier_T, zero_i)
    params = eco.prepare(sc)
    state = jax.jit(eco.init, static_argnums=1)(jax.random.key(seed), n, params,
                                                region_ids=ids)
    step = jax.jit(eco.step)
    curve = []
    t0 = time.perf_counter()
    for t in range(windows):
        state, _, ev = step(params, state, action, jnp.int32(t))
        curve.append(np.asarray(ev.test_acc))
        if every and (t + 1) % every == 0:
            print(f"window {t + 1}: host {curve[-1][:regions].mean():.3f}, "
                  f"grown {curve[-1][regions:].mean():.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return np.stack(curve), state, time.perf_counter() - t0


def summarise(curve, state, eco: Neural, regions: int, every: int) -> dict:
    last = curve[-10:].mean(0)
    out = {}
    for name, sl in (("host", slice(0, regions)), ("grown", slice(regions, None))):
        acc = last[sl]
        out[name] = {
            "test_acc_final_per_region": acc.tolist(),
            "test_acc_final_mean": float(acc.mean()),
            "test_acc_final_min": float(acc.min()),
            "test_acc_final_max": float(acc.max()),
            "test_acc_best_window_mean": float(curve[:, sl].mean(1).max()),
            "curve_every": every,
            "curve_mean": curve[every - 1::every, sl].mean(1).tolist(),
        }
    stage = np.asarray(state.stage)[regions:]
    kc = eco.arch.n_conv
    kinds = ["conv"] * kc + ["mlp"] * (eco.n_slots - kc)
    names = lc.STAGE_NAMES
    out["grown"]["slots"] = [[f"{kinds[k]}:{names.get(int(s), s)}" for k, s in enumerate(r)]
                             for r in stage]
    out["grown"]["fossilised_conv_per_region"] = (stage[:, :kc] == lc.FOSSILIZED).sum(1).tolist()
    out["grown"]["fossilised_mlp_per_region"] = (stage[:, kc:] == lc.FOSSILIZED).sum(1).tolist()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/neural_anchor.json")
    p.add_argument("--regions", type=int, default=4)
    p.add_argument("--windows", type=int, default=300)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--conv-channels", type=int, default=4)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    eco = Neural(hidden=args.hidden, steps=args.steps, batch=args.batch,
                 conv_channels=args.conv_channels)
    sc = default_variant()
    curve, state, seconds = run(eco, sc, args.regions, args.windows, args.every, args.seed)
    result = {
        "machine": _common.machine(),
        "paper_test_acc": PAPER,
        "dataset": {"sha256": sc.dataset_sha256, "args": dict(sc.dataset_args),
                    "n_train": int(sc.data.x_train.shape[0]),
                    "n_val": int(sc.data.x_val.shape[0]),
                    "n_test": int(sc.data.x_test.shape[0])},
        "ecology": {f: getattr(eco, f) for f in (
            "hidden", "n_slots", "seed_hidden", "conv_channels", "conv_kernel",
            "conv_stride", "steps", "batch")},
        "windows": args.windows, "regions_per_group": args.regions, "seed": args.seed,
        "samples_seen_per_region": args.windows * args.steps * args.batch,
        "seconds": seconds,
    }
    result.update(summarise(curve, state, eco, args.regions, args.every))
    h, g = result["host"]["test_acc_final_mean"], result["grown"]["test_acc_final_mean"]
    result["verdict"] = {
        "host_minus_paper_mlp": h - PAPER["mlp"],
        "grown_minus_paper_mlp": g - PAPER["mlp"],
        "grown_exceeds_paper_mlp": bool(g > PAPER["mlp"]),
        "grown_minus_host": g - h,
    }
    print(f"host {h:.3f}, grown {g:.3f} (paper: MLP {PAPER['mlp']}, CNN {PAPER['cnn']})")

    from narset_jax.atomic import write_json

    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
