"""Drive Narset online from a synthetic event stream, as a training loop would.

Each window, every region (one Kasmina cell) emits the events of ``docs/telemetry.md``: its
validation loss, LSTM health, seed operations and counts, growth ratio, and a boundary
marker at the end of each "epoch". From window 30 to 60 a third of the regions go through
a crisis (NaN panics and rollbacks, PPO anomalies, LSTM past critical, heavy churn). Narset
moves those regions into repair (Tamiyo-heavy, Emrakul starved) and back after it ends.

    python examples/online.py                       # 64 regions, 100 windows
    python examples/online.py --regions 1024 --windows 300 --every 25
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from narset_jax import NarsetParams
from narset_jax.online import OnlineNarset


def synthetic_events(rng: np.random.Generator, n_regions: int, window: int) -> list[dict]:
    """One window of events for every region (a third in crisis during windows 30-59)."""
    crisis = 30 <= window < 60
    events = []
    for r in range(n_regions):
        hit = crisis and r % 3 == 0
        base = {"region": r, "window": window}
        loss = 2.0 * np.exp(-0.02 * window) + 0.05 * rng.standard_normal()
        if hit:
            loss += 0.5
        events.append({**base, "kind": "loss", "value": float(loss)})
        events.append(
            {**base, "kind": "lstm_health", "h_rms": float(12.0 if hit else rng.uniform(1, 3))}
        )
        if hit:
            events.append({**base, "kind": "governor_rollback", "panic_reason": "nan"})
            events += [{**base, "kind": "ppo_anomaly", "anomaly": "ratio_explosion"}] * 3
        for _ in range(rng.poisson(6 if hit else 1)):
            delta = float(rng.normal(0, 0.3 if hit else 0.05))
            events.append({**base, "kind": "seed_op", "op": "set_alpha", "delta_alpha": delta})
        events.append({**base, "kind": "seed_counts", "active": 2, "fossilised": 4 + window // 20})
        events.append({**base, "kind": "growth_ratio", "value": 1.5 + 0.01 * window})
        if window % 5 == 4 and not hit:
            events.append({**base, "kind": "boundary"})
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=64)
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="print every N windows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    online = OnlineNarset(NarsetParams(), args.regions)
    crisis = np.arange(args.regions) % 3 == 0
    print("window  repair(crisis/calm)  x_T(crisis/calm)  x_E(crisis/calm)  lysis allowed")
    t_first = t_rest = 0.0
    for w in range(args.windows):
        events = synthetic_events(rng, args.regions, w)
        t0 = time.perf_counter()
        d = online.step_events(events)  # the training loop's one call per window
        d.x_T.block_until_ready()
        if w == 0:
            t_first = time.perf_counter() - t0
        else:
            t_rest += time.perf_counter() - t0
        if w % args.every == args.every - 1 or w == args.windows - 1:
            mode, x_T, x_E = np.asarray(d.mode), np.asarray(d.x_T), np.asarray(d.x_E)
            print(
                f"{w:6d}  {mode[crisis].mean():8.2f} / {mode[~crisis].mean():4.2f}"
                f"  {x_T[crisis].mean():8.2f} / {x_T[~crisis].mean():4.2f}"
                f"  {x_E[crisis].mean():8.2f} / {x_E[~crisis].mean():4.2f}"
                f"  {int((np.asarray(d.tier_E) == 2).sum()):6d}"
            )
    rep = online.report
    per = t_rest / max(args.windows - 1, 1) * 1e3
    print(
        f"{rep.events} events in {rep.windows} windows; first window {t_first:.2f} s "
        f"(compiles the step), then {per:.2f} ms per window (events -> telemetry -> step); "
        f"unknown regions {rep.unknown_region}, out of range {sum(rep.out_of_range.values())}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
