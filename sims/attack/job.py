"""``narset attack``: train the attacker, harden Narset, and report capture and its price.

[`sims.attack.run_attack`][] is the whole job: for each params set (the given params,
defaults when none; the packaged tuned preset when it exists; the hardened params it
produces by min-max training), the capture of the naive spoofers, the capture of the
learned attacker (a best response to those params), the honest scenarios' progress and
objective, and curves of both captures over the attack budget, with 95% t-intervals over
held-out seeds. See ``docs/gaslighting.md``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import sims
from narset_jax.params import NarsetParams
from sims.attack.ecology import AttackSetup, naive_budget, start_attacker
from sims.attack.harden import HARDEN, harden
from sims.attack.train import (
    AttackConfig,
    best_response,
    es_attack,
    eval_attack,
    eval_keys,
    eval_stylised,
    train_keys,
)
from sims.tune.stats import t_interval

__all__ = ["ABLATION", "CLI_FLAGS", "HONEST", "TUNED_PRESET", "naive_at_budget", "run_attack",
           "run_from_args", "summary_line", "write_outputs"]

HONEST = ("steady", "crisis")
"""The honest scenarios (no spoofers) whose progress and objective price the hardening."""

ABLATION = {
    "signals": ("corroborate", "persistence", "rise_cap", "persist_decay", "scale_rollbacks",
                "scale_anomalies", "scale_nonfinite"),
    "gains": ("gain_T_crisis", "gain_T_repair"),
}
"""The hardened fields of each ablation set (see [`sims.attack.run_attack`][])."""

TUNED_PRESET = Path(__file__).resolve().parent.parent / "tune" / "presets" / "tuned.toml"
"""The packaged tuned params, reported beside the given ones when the file exists."""


def naive_at_budget(scenario: sims.Scenario, budget: float) -> sims.Scenario:
    """``scenario``'s naive spoofers with their spike size scaled so that they spend
    ``budget`` units per window (their rate is unchanged)."""
    base = naive_budget(scenario)
    if base <= 0:
        raise ValueError("the scenario's naive spoofers spend nothing (spoof_rate or "
                         "spoof_size is 0): give --attack-budget")
    return scenario.replace(spoof_size=float(scenario.spoof_size) * budget / base)


def _ci(values) -> dict[str, float]:
    return t_interval(np.asarray(values, np.float64))


def _honest(params: NarsetParams, honest: Sequence[sims.Scenario], keys, cfg):
    out = {}
    for sc in honest:
        e = eval_stylised(params, sc, keys, cfg)
        out[sc.name] = {k: _ci(e[k]) | {"values": e[k].tolist()}
                        for k in ("progress", "objective")}
    return out


def _paired(a: dict, b: dict) -> dict[str, float]:
    """The 95% t-interval of ``b - a`` per seed (the same held-out seeds)."""
    return _ci(np.asarray(b["values"]) - np.asarray(a["values"]))


def run_attack(
    scenario: sims.Scenario,
    params: NarsetParams | None = None,
    *,
    cfg: AttackConfig,
    attack_budget: float | None = None,
    budgets: Sequence[float] | None = None,
    honest: Sequence[str | sims.Scenario] = HONEST,
    rounds: int = 2,
    harden_generations: int = 4,
    curve_generations: int = 2,
    seed: int = 0,
    label: str = "defaults",
    include_tuned: bool = True,
    ablation: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], NarsetParams]:
    """The job of ``narset attack`` (no I/O).

    **Arguments:**

    - ``scenario``: a stylised scenario with spoofers (``spoofer_fraction > 0``).
    - ``params``: the params attacked (default: the defaults); ``label`` names them.
    - ``cfg``: rollout size and the best response's settings; ``cfg.population`` is also
      the population of Narset's SNES in the hardening.
    - ``attack_budget``: units per spoofer per window (default: what the naive spoofers
      spend, [`sims.attack.naive_budget`][]).
    - ``budgets``: the curves' budgets (default ``0.5, 1, 2`` times ``attack_budget``).
    - ``honest``: honest scenarios (names or scenarios).
    - ``rounds``, ``harden_generations``: min-max rounds and Narset's SNES generations per
      round; ``curve_generations``: SNES generations of each curve point's best response
      (warm-started from the full best response at ``attack_budget``).
    - ``include_tuned``: also report the packaged tuned preset if it exists.
    - ``ablation``: also report the given params with only the hardened signal
      processing (``hardened:signals``) and with only the hardened repair gains
      (``hardened:gains``) (best response, naive capture and honest costs; no curves).

    **Returns:** ``(report, hardened_params)``; the report is JSON-ready.
    """
    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    if float(scenario.spoofer_fraction) <= 0:
        raise ValueError(f"scenario {scenario.name!r} has no spoofers (spoofer_fraction 0)")
    params = NarsetParams() if params is None else params
    b = naive_budget(scenario) if attack_budget is None else float(attack_budget)
    if not np.isfinite(b) or b <= 0:
        raise ValueError(f"--attack-budget must be > 0, got {attack_budget!r}")
    budgets = [0.5 * b, b, 2 * b] if budgets is None else [float(x) for x in budgets]
    honest_sc = [sims.load_scenario(h) if isinstance(h, str) else h for h in honest]
    keys = eval_keys(seed, cfg.eval_seeds)
    setup = AttackSetup(scenario=scenario, attacker=start_attacker(),
                        budget=jnp.asarray(b, jnp.float32))

    sets: dict[str, NarsetParams] = {label: params}
    if include_tuned and TUNED_PRESET.is_file() and label != "tuned":
        sets["tuned"] = NarsetParams.from_toml(TUNED_PRESET)

    say(f"hardening {label} params: {rounds} round(s)")
    hard = harden(params, setup, honest_sc, cfg, rounds=rounds,
                  generations=harden_generations, population=cfg.population, seed=seed,
                  log=say)
    sets["hardened"] = hard.params
    if ablation:
        # Which part of the hardening does the work: the signal processing (the hardening
        # fields, persistence memory and scales) or the repair gains (what need buys)?
        for part, names in ABLATION.items():
            sets[f"hardened:{part}"] = params.replace(
                **{n: float(getattr(hard.params, n)) for n in names})

    results: dict[str, Any] = {}
    for name, p in sets.items():
        say(f"{name}: naive capture, best response, honest scenarios")
        naive = eval_stylised(p, naive_at_budget(scenario, b), keys, cfg)
        br = best_response(p, setup, cfg, seed=seed + 7, keys=keys)
        att_eval = br.eval
        curve_naive, curve_learned = [], []
        for x in (budgets if ":" not in name else ()):
            nv = eval_stylised(p, naive_at_budget(scenario, x), keys, cfg)["capture"]
            s_x = eqx.tree_at(lambda s: s.budget, setup, jnp.asarray(x, jnp.float32))
            s_x = eqx.tree_at(lambda s: s.attacker, s_x, br.attacker)
            cur_cfg = dataclasses.replace(cfg, grad_iters=0, es_generations=curve_generations)
            att, _ = es_attack(p, s_x, cur_cfg, seed=seed + 11)
            # The warm start or the ES's result, picked on training seeds.
            cands = [s_x, eqx.tree_at(lambda s: s.attacker, s_x, att)]
            pick = train_keys(seed + 11, 40_000, cfg.eval_seeds)
            best = max(cands, key=lambda s: float(np.mean(
                eval_attack(p, s, pick, cfg)["capture"])))
            learned = eval_attack(p, best, keys, cfg)["capture"]
            curve_naive.append(_ci(nv))
            curve_learned.append(_ci(learned))
        results[name] = {
            "capture_naive": _ci(naive["capture"]),
            "capture_learned": _ci(br.capture),
            "attacked_objective": _ci(att_eval["objective"]),
            "attacked_progress": _ci(att_eval["progress"]),
            "spoofer_progress": _ci(att_eval["spoofer_progress"]),
            "best_response": br.summary(),
            "honest": _honest(p, honest_sc, keys, cfg),
        }
        if curve_learned:
            results[name]["curve"] = {"naive": curve_naive, "learned": curve_learned}

    given, hardened = results[label], results["hardened"]
    report = {
        "scenario": scenario.name,
        "regions": cfg.n_regions,
        "steps": cfg.n_steps,
        "seed": seed,
        "eval_seeds": cfg.eval_seeds,
        "attack_budget": b,
        "naive_budget": naive_budget(scenario),
        "params_label": label,
        "capture_naive": given["capture_naive"]["mean"],
        "capture_learned": given["capture_learned"]["mean"],
        "capture_learned_hardened": hardened["capture_learned"]["mean"],
        "capture_naive_hardened": hardened["capture_naive"]["mean"],
        # Hardened minus given, paired over the same held-out seeds (the same regions).
        "honest_cost": {
            sc: {k: _paired(given["honest"][sc][k], hardened["honest"][sc][k])
                 for k in ("progress", "objective")}
            for sc in given["honest"]
        },
        "budgets": budgets,
        "sets": results,
        "hardened_params": {n: float(getattr(hard.params, n)) for n in HARDEN},
        "hardening_rounds": hard.rounds,
        "settings": dataclasses.asdict(cfg) | {
            "rounds": rounds, "harden_generations": harden_generations,
            "curve_generations": curve_generations,
            "honest": [s.name for s in honest_sc]},
        "seconds": time.perf_counter() - t0,
    }
    return report, hard.params


def write_outputs(report: dict[str, Any], hardened: NarsetParams, out) -> list[Path]:
    """Write ``out/hardened.toml``, ``out/attack.json`` (the report) and
    ``out/capture_vs_budget.png``, atomically. **Returns:** the paths written."""
    from narset_jax.atomic import write_json, write_text
    from narset_jax.plots.attack import plot_capture_curves

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_text(out / "hardened.toml", hardened.to_toml()),
             write_json(out / "attack.json", report)]
    paths.append(plot_capture_curves(report, out / "capture_vs_budget.png"))
    return paths


def _budget_list(text: str) -> list[float]:
    import argparse

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}"
                                         ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"budgets must be > 0, got {text!r}")
    return values


# ``narset attack``'s flags beyond --honest, --out and --json:
# (flag, type, default, help). The CLI declares them; ``run_from_args`` reads them.
CLI_FLAGS: tuple[tuple[str, Any, Any, str], ...] = (
    ("--scenario", str, "spoofing", "stylised scenario with spoofers, name or .toml "
     "(default spoofing)"),
    ("--params", str, None, "params (TOML) to attack (default: the defaults)"),
    ("--regions", int, 64, "regions R (default 64)"),
    ("--steps", int, 60, "windows T (default 60)"),
    ("--attack-budget", float, None, "fake units per spoofer per window (default: what "
     "the naive spoofers spend)"),
    ("--budgets", _budget_list, None, "B1,B2,...: the curves' budgets (default 0.5, 1, 2 "
     "times the attack budget)"),
    ("--rounds", int, 2, "min-max rounds (default 2)"),
    ("--grad-iters", int, 12, "attacker gradient iterations per best response (default 12)"),
    ("--es-generations", int, 4, "attacker SNES generations per best response (default 4)"),
    ("--harden-generations", int, 4, "Narset SNES generations per round (default 4)"),
    ("--curve-generations", int, 2, "attacker SNES generations per curve point (default 2)"),
    ("--population", int, 8, "SNES population (default 8)"),
    ("--batch", int, 4, "seeds per iteration or generation (default 4)"),
    ("--eval-seeds", int, 8, "held-out seeds of every reported number (default 8)"),
    ("--progress-weight", float, 0.0, "weight of the spoofers' own progress in their gain "
     "(default 0)"),
    ("--seed", int, 0, "PRNG seed (default 0)"),
)


def summary_line(report: dict[str, Any]) -> str:
    """The one line ``narset attack`` prints: the three captures."""
    return ("capture naive {capture_naive:.4f}, learned {capture_learned:.4f}, learned vs "
            "hardened {capture_learned_hardened:.4f}".format(**report))


def run_from_args(args, log=None) -> tuple[dict[str, Any], NarsetParams]:
    """[`sims.attack.run_attack`][] from ``narset attack``'s parsed flags (validated here:
    one-line ``ValueError``s naming the flag)."""
    for name in ("regions", "steps", "batch", "population"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.eval_seeds < 2:
        raise ValueError("--eval-seeds must be >= 2 (the report has intervals over seeds)")
    for name in ("rounds",):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    cfg = AttackConfig(n_regions=args.regions, n_steps=args.steps, grad_iters=args.grad_iters,
                       es_generations=args.es_generations, population=args.population,
                       batch=args.batch, eval_seeds=args.eval_seeds,
                       progress_weight=args.progress_weight)
    params = NarsetParams.from_toml(args.params) if args.params else None
    return run_attack(
        sims.load_scenario(args.scenario), params, cfg=cfg, attack_budget=args.attack_budget,
        budgets=args.budgets, honest=tuple(args.honest or HONEST), rounds=args.rounds,
        harden_generations=args.harden_generations, curve_generations=args.curve_generations,
        seed=args.seed, label="given" if args.params else "defaults", log=log)
