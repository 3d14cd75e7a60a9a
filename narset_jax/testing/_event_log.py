"""Synthetic event logs in the JSONL schema of ``docs/telemetry.md``."""

from __future__ import annotations

import json

import numpy as np

__all__ = ["synthetic_event_log"]


def synthetic_event_log(n_windows: int = 40, seed: int = 0, n_regions: int = 64) -> list[str]:
    """A synthetic event log, one JSON object per line: calm regions, a crisis in some,
    intermittently silent regions, and a NaN loss in the last line.

    **Returns:** the lines (without newlines).
    """
    rng = np.random.default_rng(seed)
    lines = []
    for w in range(n_windows):
        for r in range(n_regions):
            if r % 11 == 5 and w % 3 == 1:
                continue  # an intermittently silent region
            crisis = r % 4 == 0 and 10 <= w < 25

            def ev(kind, _r=r, _w=w, **x):
                return json.dumps({"region": _r, "window": _w, "kind": kind, **x})

            loss = float(1.5 * np.exp(-0.05 * w) + 0.02 * rng.standard_normal())
            lines.append(ev("loss", value=loss))
            lines.append(ev("lstm_health", h_rms=12.0 if crisis else float(rng.uniform(1, 3))))
            if crisis:
                lines.append(ev("governor_rollback", panic_reason="nan"))
                lines.append(ev("ppo_anomaly", anomaly="ratio_explosion"))
            lines.append(ev("seed_op", op="set_alpha", delta_alpha=float(rng.normal(0, 0.1))))
            lines.append(ev("seed_counts", active=2, fossilised=3 + w // 10))
            lines.append(ev("growth_ratio", value=1.5 + 0.02 * w))
            if w % 4 == 3:
                lines.append(ev("boundary"))
    lines.append(f'{{"region": 1, "window": {n_windows}, "kind": "loss", "value": NaN}}')
    return lines
