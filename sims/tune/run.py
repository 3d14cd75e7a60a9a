"""One tuning run, as ``narset tune`` makes it: train, random search, surrogate report,
evaluate, write.

[`sims.tune.run_tune`][] trains with the relaxed controller (``method="grad"``) or with an
evolution strategy on the hard controller (``method="es"``, [`sims.tune.es`][]),
checkpointing every few iterations or generations (a resumed run continues bit for bit),
then runs a random search with the same number of rollouts, measures the surrogate gap
([`sims.tune.surrogate`][]) and evaluates the starting params, the tuned params, the
random search's best and the baselines with the **hard** controller on held-out seeds and
held-out scenarios. It writes ``params.toml``, ``random_search_params.toml``,
``history.json``, ``evaluation.json``, ``loss_curve.png``, ``params_before_after.png``
and ``checkpoint.npz`` to the output directory (see ``docs/tuning.md``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax

import sims
from narset_jax.atomic import write_json, write_text
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from sims.tune import checkpoint, es, evaluation, search, surrogate, training
from sims.tune.loss import TuneConfig, scenario_params
from sims.tune.params_map import TUNED, anneal_factor, from_params, hard, to_params
from sims.tune.settings import ES_KEYS, RUN_KEYS, check_settings, run_config
from sims.tune.stats import verdict

__all__ = ["TuneResult", "params_toml", "run_tune"]


class TuneResult(NamedTuple):
    """What [`sims.tune.run_tune`][] returns: ``summary``, the run's JSON-ready summary
    (``status`` ``"stopped"`` or ``"done"``), ``table``, the evaluation as text, and
    ``surrogate``, the surrogate report as text (both ``None`` when stopped)."""

    summary: dict[str, Any]
    table: str | None
    surrogate: str | None = None


def params_toml(params: NarsetParams, header: list[str], budget: str | None) -> str:
    """The params file. With ``budget=None`` (each scenario's recommendation) the
    ``budget`` line is left out, so that ``narset simulate --params`` applies a scenario's
    recommended mode exactly as training and evaluation did."""
    text = params.to_toml()
    if budget is None:
        header = [*header, "no budget line: narset simulate uses the scenario's recommended "
                  "budget mode (else region), as tuning and evaluation did"]
        text = "".join(line + "\n" for line in text.splitlines()
                       if not line.startswith("budget ="))
    return "".join(f"# {h}\n" for h in header) + text


def _scenario_entries(names) -> list[dict[str, Any]]:
    entries = []
    for name in names:
        sc = sims.load_scenario(name)
        entries.append({"name": name, "label": sc.name, "values": sc.without_metadata().to_dict()})
    return entries


def _resume_settings(settings: dict[str, Any], explicit: set[str], ckpt_path: Path):
    """The stored metadata of the run in ``ckpt_path``; ``settings`` take its run settings
    (a ``UserError`` if an explicit one differs)."""
    if not ckpt_path.is_file():
        raise UserError(f"--resume: no checkpoint at {ckpt_path}")
    stored = checkpoint.read_checkpoint_meta(ckpt_path)
    current = dict(settings)
    # A gradient run's settings leave out the ES keys: its method is "grad".
    config = {"method": "grad", **stored["config"]}
    for key in RUN_KEYS + ES_KEYS:
        if key in explicit and key in config:
            given = json.loads(json.dumps(current[key]))
            if given != config[key]:
                raise UserError(f"--resume: {key} = {given!r} differs from the "
                                f"checkpoint's {config[key]!r}")
    settings.update(stored["config"])
    settings["base_source"] = stored.get("base_source", "defaults")
    return stored


def _holdout(names, train_labels) -> dict[str, sims.Scenario]:
    if names is None:
        names = [n for n in sims.SCENARIOS if n not in train_labels]
    holdout = {}
    for name in names:
        sc = sims.load_scenario(name)
        if sc.name in train_labels:
            raise UserError(f"--holdout {name!r} is also a training scenario")
        holdout[sc.name] = sc
    if not holdout:
        raise UserError("no held-out scenario: every shipped scenario is trained on; "
                        "pass --holdout PATH.toml")
    return holdout


def _baselines(spec: str | None) -> list[str]:
    all_baselines = [c for c in sims.CONTROLLERS if c != "narset"]
    if spec is None:
        return all_baselines
    if spec.strip() == "none":
        return []
    baselines = [b.strip() for b in spec.split(",") if b.strip()]
    for b in baselines:
        if b not in all_baselines:
            raise UserError(f"--baselines: unknown baseline {b!r}; valid: "
                            f"{', '.join(all_baselines)} (or 'none')")
    return baselines


def run_tune(
    settings: Mapping[str, Any],
    explicit: set[str],
    *,
    out: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    holdout: list[str] | None = None,
    baselines: str | None = None,
    eval_regions: int | None = None,
    eval_steps: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run (or resume) a tuning run into ``out``.

    **Arguments:**

    - ``settings``, ``explicit``: from [`sims.tune.build_settings`][].
    - ``out``: the output directory; it must not hold a run unless ``resume``.
    - ``resume``: continue the run in ``out`` from its checkpoint (explicit run settings
      must match it).
    - ``stop_after``: stop (with a checkpoint) once this many iterations are done.
    - ``holdout``: held-out evaluation scenarios (default: every shipped scenario not
      trained on); ``baselines``: comma-separated baseline controllers, ``"none"``, or
      ``None`` for all.
    - ``eval_regions``, ``eval_steps``: evaluation size (default: the training size).
    - ``progress``: draw progress bars on stderr; ``log``: receives one-line messages
      (the start of training, a stop).

    **Returns:** [`sims.tune.TuneResult`][]. Bad input raises ``UserError``.
    """
    log = log if log is not None else (lambda msg: None)
    settings = dict(settings)
    out = Path(out)
    ckpt_path = out / checkpoint.CHECKPOINT
    stored = None
    if resume:
        stored = _resume_settings(settings, explicit, ckpt_path)
    elif ckpt_path.exists():
        raise UserError(f"{out} already holds a run ({checkpoint.CHECKPOINT}); pass --resume "
                        "to continue it, or choose another --out")
    check_settings(settings)
    es.check_es_settings(settings)
    method = settings["method"]
    if method == "es" and settings["es_learning_rate"] is None:
        settings["es_learning_rate"] = es.ES_DEFAULT_LEARNING_RATE[settings["es_strategy"]]
    if stop_after is not None and stop_after <= 0:
        raise UserError(f"--stop-after must be a positive int, got {stop_after}")

    if settings["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from tqdm import tqdm

    entries = _scenario_entries(settings["scenarios"])
    if stored is not None:
        for entry, old in zip(entries, stored["scenario_values"]):
            if json.loads(json.dumps(entry["values"])) != old:
                raise UserError(f"--resume: scenario {entry['name']!r} changed since the "
                                "checkpoint was written")
    train_scenarios = [sims.load_scenario(n) for n in settings["scenarios"]]
    train_labels = [e["label"] for e in entries]
    budget = settings["budget"]
    base_hard = NarsetParams.from_dict(settings["base_params"])
    train_budgets = [scenario_params(base_hard, sc, budget).budget for sc in train_scenarios]
    if stored is not None and stored.get("train_budgets") != train_budgets:
        raise UserError(f"--resume: the training scenarios' budget modes {train_budgets} "
                        f"differ from the checkpoint's {stored.get('train_budgets')}")
    held_out = _holdout(holdout, train_labels)
    baseline_names = _baselines(baselines)

    dtype = jnp.dtype(settings["dtype"]).type
    N, T, K = settings["regions"], settings["steps"], settings["iters"]
    eN = N if eval_regions is None else eval_regions
    eT = T if eval_steps is None else eval_steps
    if eN <= 0 or eT <= 0:
        raise UserError(f"--eval-regions and --eval-steps must be positive, got {eN} and {eT}")
    S, B = len(train_scenarios), settings["batch"]
    weights = sims.ObjectiveWeights(**settings["weights"])
    base = base_hard.replace(hysteresis=settings["hysteresis"])
    truncate = settings["truncate"] or None
    cfg = TuneConfig(n_regions=N, n_steps=T, truncate=truncate,
                     checkpoint=settings["remat"], dtype=settings["dtype"])
    optimizer = training.make_optimizer(settings["learning_rate"], settings["clip_norm"])
    meta = {
        "config": run_config(settings),
        "scenario_values": [json.loads(json.dumps(e["values"])) for e in entries],
        "train_budgets": train_budgets,
        "base_source": settings["base_source"],
        "train_key": jax.random.key_data(
            training.run_keys(settings["seed"], training.STREAM_TRAIN)).tolist(),
    }
    P = settings["es_population"] if method == "es" else 1
    steps_total = K // P  # gradient iterations, or ES generations
    es_opts = {}
    if method == "es":
        es_opts = dict(population=P, strategy=settings["es_strategy"],
                       sigma=settings["es_sigma"], learning_rate=settings["es_learning_rate"])
        _, _, template = es.es_init(es.start_raw(base_hard), seed=settings["seed"], **es_opts)
        state, history = template, es.ESHistory()
    else:
        template = training.train_init(from_params(base.astype(dtype), dtype), optimizer)
        state, history = template, training.History()
    if stored is not None:
        state, history, old_meta = checkpoint.load_checkpoint(
            ckpt_path, template, es.ESHistory if method == "es" else training.History)
        if old_meta.get("train_key") != meta["train_key"]:
            raise UserError(f"{ckpt_path}: PRNG key differs from the run's seed")

    budgets = (", ".join(f"{lab} {b}" for lab, b in zip(train_labels, train_budgets))
               + ("" if budget is None else " (fixed by --params)"))
    if method == "es":
        log(
            f"narset tune --method es: {steps_total} generations x {P} candidates x {S} "
            f"scenario(s) x {B} seeds = {K * S * B} rollouts of N={N} regions x T={T} windows "
            f"(hard hysteresis, {settings['es_strategy']}, sigma {settings['es_sigma']}; "
            f"budget {budgets}); "
            + (f"resuming at generation {state.iteration}; " if stored is not None else "")
            + "compiling..."
        )
    else:
        log(
            f"narset tune: {K} iterations x {S} scenario(s) x {B} seeds = {K * S * B} rollouts "
            f"of N={N} regions x T={T} windows ({settings['hysteresis']} hysteresis"
            f"{', truncated to ' + str(truncate) if truncate else ''}"
            f"{', remat' if settings['remat'] else ''}; budget "
            + budgets + "); "
            + (f"resuming at iteration {state.iteration}; " if stored is not None else "")
            + "compiling..."
        )
    unit = "gen" if method == "es" else "it"
    bar = tqdm(total=steps_total, initial=state.iteration, desc="narset tune", unit=unit,
               file=sys.stderr, disable=not progress)

    def postfix(hist):
        if method == "es":
            bar.set_postfix(mean=f"{hist.loss[-1]:.4f}", best=f"{hist.best_so_far[-1]:.4f}")
        else:
            bar.set_postfix(loss=f"{hist.loss[-1]:.4f}", gnorm=f"{hist.grad_norm[-1]:.3g}")

    if history.loss:
        postfix(history)
    latest = {"state": state, "saved": state.iteration}
    every = settings["checkpoint_every"]

    def save(st):
        checkpoint.save_checkpoint(ckpt_path, st, history, meta)
        latest["saved"] = st.iteration

    def callback(st, hist):
        latest["state"] = st
        bar.update(1)
        postfix(hist)
        if st.iteration % every == 0 or st.iteration == steps_total:
            save(st)

    t0 = time.perf_counter()
    try:
        if method == "es":
            state, history = es.es_train(
                base_hard, train_scenarios, iters=K, cfg=cfg, batch=B, seed=settings["seed"],
                weights=weights, budget=budget, state=state, history=history,
                stop_after=stop_after, callback=callback, **es_opts,
            )
        else:
            state, history = training.train(
                base, train_scenarios, iters=K, cfg=cfg, batch=B, seed=settings["seed"],
                weights=weights, learning_rate=settings["learning_rate"],
                clip_norm=settings["clip_norm"], anneal=settings["anneal"], budget=budget,
                state=state,
                history=history, stop_after=stop_after, callback=callback,
            )
    except KeyboardInterrupt:
        if latest["state"].iteration != latest["saved"]:
            save(latest["state"])
        raise
    finally:
        bar.close()
    train_s = time.perf_counter() - t0
    if state.iteration != latest["saved"]:
        save(state)
    if state.iteration < steps_total:
        what = "generations" if method == "es" else "iterations"
        log(f"narset tune: stopped after {state.iteration} of {steps_total} {what}; "
            f"checkpoint in {ckpt_path}; continue with --resume")
        stopped = {"command": "tune", "status": "stopped", "iteration": state.iteration,
                   "iters": K, "checkpoint": str(ckpt_path)}
        if method == "es":
            stopped.update(method="es", generations=steps_total)
        return TuneResult(stopped, None)

    tuned = hard(to_params(state.raw, base_hard))
    n_rollouts = K * S * B

    # Random search with the same number of rollouts.
    rs_bar = tqdm(total=K, desc="random search", unit="cand", file=sys.stderr,
                  disable=not progress)
    t1 = time.perf_counter()
    try:
        rs = search.random_search(
            base_hard, train_scenarios, candidates=K, batch=B, n_regions=N, n_steps=T,
            seed=settings["seed"], sigma=settings["sigma"], weights=weights, budget=budget,
            dtype=dtype, progress=lambda i: rs_bar.update(1),
        )
    finally:
        rs_bar.close()
    rs_s = time.perf_counter() - t1

    # The surrogate gap, on the random search's rollouts (training iteration 0's keys).
    t3 = time.perf_counter()
    rs_raws = search.candidate_raws(base_hard, K, seed=settings["seed"], sigma=settings["sigma"])
    sur = surrogate.surrogate_report(
        base_hard, train_scenarios, train_labels, hysteresis=settings["hysteresis"],
        candidates={n: jnp.stack([jnp.asarray(r[n]) for r in rs_raws]) for n in TUNED},
        hard_candidates=rs.objectives, final_raw=state.raw,
        final_temp=anneal_factor(K - 1, K, settings["anneal"]) if method == "grad" else 1.0,
        keys=training.batch_keys(training.run_keys(settings["seed"], training.STREAM_TRAIN),
                                 0, S, B),
        n_regions=N, n_steps=T, weights=weights, budget=budget, dtype=dtype,
    )
    sur_s = time.perf_counter() - t3

    # Evaluation: hard controller, held-out seeds, trained and held-out scenarios.
    ref = "defaults" if settings["base_source"] == "defaults" else "initial"
    candidates = {ref: (base_hard, "narset"), "tuned": (tuned, "narset"),
                  "random_search": (rs.params, "narset")}
    for c in baseline_names:
        candidates[c] = (base_hard, c)
    eval_scenarios = dict(zip(train_labels, train_scenarios))
    eval_scenarios.update(held_out)
    n_eval = settings["eval_seeds"]
    ev_bar = tqdm(total=len(eval_scenarios) * len(candidates), desc="evaluation",
                  unit="run", file=sys.stderr, disable=not progress)
    t2 = time.perf_counter()
    try:
        ev = evaluation.evaluate(
            candidates, eval_scenarios, seeds=n_eval, n_regions=eN, n_steps=eT,
            seed=settings["seed"], weights=weights, reference=ref,
            pairs=[("tuned", "random_search")], budget=budget, dtype=dtype,
            progress=lambda: ev_bar.update(1),
        )
    finally:
        ev_bar.close()
    eval_s = time.perf_counter() - t2

    # Outputs.
    what = (f"--method es ({settings['es_strategy']}): {steps_total} generations x {P} "
            "candidates" if method == "es" else f"{K} iterations")
    header = [f"narset tune: {what} on {', '.join(train_labels)}; N={N}, T={T}, "
              f"batch {B}, seed {settings['seed']}", "hard hysteresis for simulation and "
              "deployment; see history.json and evaluation.json"]
    files = {
        "params": write_text(out / "params.toml", params_toml(tuned, header, budget)),
        "random_search_params": write_text(
            out / "random_search_params.toml",
            params_toml(rs.params, [f"narset tune: best of {K} random-search candidates"],
                        budget),
        ),
    }
    hist = history.to_dict()
    hist_doc = {
        "settings": meta["config"], "history": hist,
        "random_search": {"scores": rs.scores.tolist(), "best": rs.best,
                          "rollouts": rs.rollouts},
    }
    if method == "es":
        hist_doc["es"] = {"generations": steps_total, "population": P, "rollouts": n_rollouts,
                          "result": "the search distribution's mean after the last generation"}
    files["history"] = write_json(out / "history.json", hist_doc)
    held = set(held_out)
    eval_doc = {
        "protocol": {
            "hysteresis": "hard", "seeds": n_eval, "regions": eN, "steps": eT,
            "interval": "95% Student t: mean +- t(0.975, n-1) * sd / sqrt(n)",
            "reference": ref, "held_out_scenarios": sorted(held),
            "train_scenarios": train_labels,
            "budget": {sc: next(iter(rows.values()))["budget"] for sc, rows in ev.items()},
            "budget_rule": ("each scenario's recommended mode, else the starting params' "
                            "(narset simulate without --budget)" if budget is None
                            else f"{budget} for every scenario (set by --params)"),
            "rollouts": (
                {"gradient": n_rollouts, "random_search": rs.rollouts,
                 "note": "each gradient rollout also runs a backward pass"}
                if method == "grad" else
                {"es": n_rollouts, "random_search": rs.rollouts,
                 "note": "both score every candidate with the hard controller"}),
        },
        "results": ev,
    }
    files["evaluation"] = write_json(out / "evaluation.json", eval_doc)
    from narset_jax.plots.tune import plot_es_curve, plot_loss_curve, plot_params

    if method == "es":
        files["loss_curve"] = plot_es_curve(hist, out / "loss_curve.png", population=P,
                                            random_search=rs.scores.tolist(), batch=S * B)
    else:
        files["loss_curve"] = plot_loss_curve(hist, out / "loss_curve.png",
                                              random_search=rs.scores.tolist(), batch=S * B)
    files["params_plot"] = plot_params(
        {n: float(getattr(base_hard, n)) for n in TUNED},
        {n: float(getattr(tuned, n)) for n in TUNED},
        out / "params_before_after.png",
        random_search={n: float(getattr(rs.params, n)) for n in TUNED},
    )
    table = evaluation.format_table(ev, held, ref, n_eval, eN, eT)
    verdicts = {
        sc: {
            f"tuned vs {ref}": verdict(rows["tuned"]["delta"]),
            f"random_search vs {ref}": verdict(rows["random_search"]["delta"]),
            "tuned vs random_search": verdict(rows["tuned"]["versus"].get("random_search")),
        }
        for sc, rows in ev.items()
    }
    if method == "es":
        training_summary = {
            "iterations": K, "generations": steps_total, "population": P,
            "rollouts": {"es": n_rollouts, "random_search": rs.rollouts},
            "final_loss": history.loss[-1], "best_so_far": history.best_so_far[-1],
        }
    else:
        training_summary = {
            "iterations": K,
            "rollouts": {"gradient": n_rollouts, "random_search": rs.rollouts},
            "final_loss": history.loss[-1], "final_grad_norm": history.grad_norm[-1],
            "skipped_steps": int(sum(not f for f in history.finite)),
        }
    summary = {
        "command": "tune", "status": "done", "out": str(out), "method": method,
        **training_summary,
        "seconds": {"train": train_s, "random_search": rs_s, "surrogate": sur_s,
                    "evaluation": eval_s},
        "held_out_scenarios": sorted(held), "budget": eval_doc["protocol"]["budget"],
        "verdicts": verdicts,
        "evaluation": {sc: {label: {"objective": row["objective"], "delta": row["delta"],
                                    "versus": row["versus"]}
                            for label, row in rows.items()}
                       for sc, rows in ev.items()},
        "tuned_params": {n: float(getattr(tuned, n)) for n in TUNED},
        "surrogate": sur,
        "files": {k: str(v) for k, v in files.items()},
    }
    return TuneResult(summary, table, surrogate.format_surrogate(sur))
