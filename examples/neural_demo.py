"""``make neural``: Narset on the neural ecology, 256 regions x 100 windows, in minutes.

Every region is a small network in real training on MNIST-1D (``docs/neural.md``). This is
``narset simulate --ecology neural`` with one change the command line cannot make: the
regions are trained in blocks of ``--block`` (``Neural(block=8)``, a ``lax.map`` over
blocks, each block ``vmap``ped), which on a CPU is several times faster at this size than
one ``vmap`` over all 256 regions (``docs/neural.md``, Benchmarks). Same maths, equal to
float tolerance; the network sizes and the scenario are the defaults.

    python examples/neural_demo.py --out out/neural            # crisis, 256 x 100
    python examples/neural_demo.py --scenario steady --regions 64 --windows 20 --out /tmp/n

The output directory is a normal ``narset simulate`` output: the decision log
(``decisions/``), ``manifest.json`` (with the dataset's hash and the ecology's settings),
``summary.json`` and ``plots/``; ``narset replay DIR`` checks the log bit for bit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sims.ecologies.neural import Neural, load_neural_scenario
from sims.simulate import default_chunk, resolve_params, simulate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="crisis")
    p.add_argument("--regions", type=int, default=256)
    p.add_argument("--windows", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--out", default="out/neural")
    args = p.parse_args(argv)

    eco = Neural(block=args.block)
    scenario = load_neural_scenario(args.scenario)
    params = resolve_params(None, scenario, None)
    t0 = time.perf_counter()
    summary = simulate(params, scenario, n_regions=args.regions, n_steps=args.windows,
                       seed=args.seed, out=Path(args.out), ecology=eco,
                       chunk=default_chunk(args.regions, args.windows, None))
    wall = time.perf_counter() - t0
    keep = {k: summary[k] for k in ("ecology", "metrics") if k in summary}
    print(json.dumps(keep, indent=1, default=str)[:2000])
    print(f"{args.regions} regions x {args.windows} windows of '{args.scenario}' in {wall:.0f} s")
    print(f"outputs in {args.out}/: decisions/ (Parquet decision log), manifest.json, "
          "summary.json, plots/")
    print(f"check the log bit for bit with: narset replay {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
