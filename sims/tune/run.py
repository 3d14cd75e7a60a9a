"""One tuning run, as ``narset tune`` makes it: random search, train, surrogate report,
evaluate, write.

[`sims.tune.run_tune`][] runs a random search with the run's rollout budget; with a warm
start (``warm_start``, by default for ES only, [`sims.tune.warm_start_split`][]) the method
then starts from the best of its first candidates and gets the rest of the budget, so
that the tuned params and the random search's best cost the same rollouts. It trains with
a gradient estimator (``method="grad"``) or with an evolution strategy on the hard
controller (``method="es"``, [`sims.tune.es`][]) on any ecology that supports it
(``ecology``), checkpointing every few iterations or generations (a resumed run continues
bit for bit), measures the surrogate gap
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
from sims.tune import checkpoint, es, estimators, evaluation, search, surrogate, training
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


def _scenario_entries(names, ecology=None) -> list[dict[str, Any]]:
    entries = []
    for name in names:
        sc = evaluation.load_scenario(name, ecology)
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
    config = {"method": "grad", "ecology": "stylised", **stored["config"]}
    for key in RUN_KEYS + ES_KEYS + ("ecology",):
        if key in explicit and key in config:
            given = json.loads(json.dumps(current[key]))
            if given != config[key]:
                raise UserError(f"--resume: {key} = {given!r} differs from the "
                                f"checkpoint's {config[key]!r}")
    settings.update(stored["config"])
    if "estimator" not in stored["config"]:  # a checkpoint from before --estimator
        settings["estimator"] = estimators.legacy_estimator(settings["hysteresis"],
                                                            settings["anneal"])
    if "warm_start" not in stored["config"]:  # a checkpoint from before the warm start
        settings["warm_start"] = 0.0
    settings["base_source"] = stored.get("base_source", "defaults")
    return stored


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
    if settings.get("warm_start") is None:  # the method's default
        settings["warm_start"] = search.WARM_START.get(settings.get("method"), 0.0)
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

    eco_name = settings.get("ecology", "stylised")
    if eco_name not in sims.ECOLOGIES:
        raise UserError(f"unknown --ecology {eco_name!r}; valid: {', '.join(sims.ECOLOGIES)}")
    ecology = None if eco_name == "stylised" else sims.get_ecology(eco_name)
    entries = _scenario_entries(settings["scenarios"], ecology)
    if stored is not None:
        for entry, old in zip(entries, stored["scenario_values"]):
            if json.loads(json.dumps(entry["values"])) != old:
                raise UserError(f"--resume: scenario {entry['name']!r} changed since the "
                                "checkpoint was written")
    train_scenarios = [evaluation.load_scenario(n, ecology) for n in settings["scenarios"]]
    train_labels = [e["label"] for e in entries]
    budget = settings["budget"]
    base_hard = NarsetParams.from_dict(settings["base_params"])
    train_budgets = [scenario_params(base_hard, sc, budget).budget for sc in train_scenarios]
    if stored is not None and stored.get("train_budgets") != train_budgets:
        raise UserError(f"--resume: the training scenarios' budget modes {train_budgets} "
                        f"differ from the checkpoint's {stored.get('train_budgets')}")
    held_out = evaluation.load_holdout(holdout, train_labels, ecology)
    baseline_names = _baselines(baselines)

    dtype = jnp.dtype(settings["dtype"]).type
    N, T, K = settings["regions"], settings["steps"], settings["iters"]
    eN = N if eval_regions is None else eval_regions
    eT = T if eval_steps is None else eval_steps
    if eN <= 0 or eT <= 0:
        raise UserError(f"--eval-regions and --eval-steps must be positive, got {eN} and {eT}")
    S, B = len(train_scenarios), settings["batch"]
    weights = sims.ObjectiveWeights(**settings["weights"])
    P = settings["es_population"] if method == "es" else 1
    try:  # the random search's share of the rollouts, then the method's iterations
        n_warm, K_m = search.warm_start_split(K, settings["warm_start"], P)
    except ValueError as err:
        raise UserError(str(err)) from None
    if method == "grad" and ecology is not None:
        evaluation.check_relaxed_step(ecology, train_scenarios[0])

    # Random search with the same number of rollouts (its first n_warm candidates are the
    # warm start's search: the method starts from their best).
    rs_bar = tqdm(total=K, desc="random search", unit="cand", file=sys.stderr,
                  disable=not progress)
    t1 = time.perf_counter()
    try:
        rs = search.random_search(
            base_hard, train_scenarios, candidates=K, batch=B, n_regions=N, n_steps=T,
            seed=settings["seed"], sigma=settings["sigma"], weights=weights, budget=budget,
            dtype=dtype, progress=lambda i: rs_bar.update(1), ecology=ecology,
        )
    finally:
        rs_bar.close()
    rs_s = time.perf_counter() - t1
    warm = search.warm_start(rs, n_warm)
    start_hard = base_hard if warm is None else hard(to_params(rs.raw_at(warm), base_hard))
    base = start_hard.replace(hysteresis=settings["hysteresis"])
    truncate = settings["truncate"] or None
    cfg = TuneConfig(n_regions=N, n_steps=T, truncate=truncate,
                     checkpoint=settings["remat"], dtype=settings["dtype"], ecology=ecology)
    optimizer = training.make_optimizer(settings["learning_rate"], settings["clip_norm"])
    meta = {
        "config": run_config(settings),
        "scenario_values": [json.loads(json.dumps(e["values"])) for e in entries],
        "train_budgets": train_budgets,
        "base_source": settings["base_source"],
        "train_key": jax.random.key_data(
            training.run_keys(settings["seed"], training.STREAM_TRAIN)).tolist(),
    }
    steps_total = K_m // P  # gradient iterations, or ES generations
    es_opts = {}
    if method == "es":
        es_opts = dict(population=P, strategy=settings["es_strategy"],
                       sigma=settings["es_sigma"], learning_rate=settings["es_learning_rate"])
        _, _, template = es.es_init(es.start_raw(start_hard), seed=settings["seed"], **es_opts)
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
    warm_txt = ("" if warm is None else f"random search {n_warm} candidates x {S} scenario(s) "
                f"x {B} seeds, then from its best (candidate {warm}): ")
    eco_txt = "" if ecology is None else f"{eco_name} ecology, "
    if method == "es":
        log(
            f"narset tune --method es: {warm_txt}{steps_total} generations x {P} candidates x "
            f"{S} scenario(s) x {B} seeds; {K * S * B} rollouts in all of N={N} regions x "
            f"T={T} windows ({eco_txt}hard hysteresis, {settings['es_strategy']}, sigma "
            f"{settings['es_sigma']}; "
            f"budget {budgets}); "
            + (f"resuming at generation {state.iteration}; " if stored is not None else "")
            + "compiling..."
        )
    else:
        log(
            f"narset tune: {warm_txt}{K_m} iterations x {S} scenario(s) x {B} seeds; "
            f"{K * S * B} rollouts in all of N={N} regions x T={T} windows ("
            + estimators.describe(settings["estimator"], settings["smoothing_sigma"],
                                  settings["anneal"])
            + f"{', truncated to ' + str(truncate) if truncate else ''}"
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
                start_hard, train_scenarios, iters=K_m, cfg=cfg, batch=B, seed=settings["seed"],
                weights=weights, budget=budget, state=state, history=history,
                stop_after=stop_after, callback=callback, **es_opts,
            )
        else:
            state, history = training.train(
                base, train_scenarios, iters=K_m, cfg=cfg, batch=B, seed=settings["seed"],
                weights=weights, learning_rate=settings["learning_rate"],
                clip_norm=settings["clip_norm"], anneal=settings["anneal"], budget=budget,
                estimator=settings["estimator"], smoothing_sigma=settings["smoothing_sigma"],
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
    warm_info = {
        "share": settings["warm_start"], "random_search_candidates": n_warm,
        "method_iterations": K_m, "start": warm,
        "start_score": None if warm is None else float(rs.scores[warm]),
        "rule": "the method starts from the best of the random search's first "
                "random_search_candidates candidates (hard objective, shared seeds)",
    }

    # The surrogate gap, on the random search's rollouts (training iteration 0's keys).
    t3 = time.perf_counter()
    rs_raws = rs.raws
    # ES has no estimator of its own: its report is of the estimator set, or of the soft
    # relaxation when that is the (default) smoothed one.
    sur_est = settings["estimator"] if method == "grad" or settings["estimator"] != "smoothed" \
        else "soft"
    no_relax = None if ecology is None else evaluation.relaxed_step_error(
        ecology, train_scenarios[0])
    sur = None if no_relax else surrogate.surrogate_report(
        base_hard, train_scenarios, train_labels, estimator=sur_est,
        smoothing_sigma=settings["smoothing_sigma"], seed=settings["seed"],
        candidates={n: jnp.stack([jnp.asarray(r[n]) for r in rs_raws]) for n in TUNED},
        hard_candidates=rs.objectives, final_raw=state.raw,
        final_temp=anneal_factor(K_m - 1, K_m, settings["anneal"]) if method == "grad" else 1.0,
        keys=training.batch_keys(training.run_keys(settings["seed"], training.STREAM_TRAIN),
                                 0, S, B),
        n_regions=N, n_steps=T, weights=weights, budget=budget, dtype=dtype, ecology=ecology,
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
            progress=lambda: ev_bar.update(1), ecology=ecology,
        )
    finally:
        ev_bar.close()
    eval_s = time.perf_counter() - t2

    # Outputs.
    what = (f"--method es ({settings['es_strategy']}): {steps_total} generations x {P} "
            "candidates" if method == "es" else f"{K_m} iterations")
    if warm is not None:
        what = (f"random search of {n_warm} candidates, then from its best (candidate {warm})"
                f" {what}")
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
    hist_doc["warm_start"] = warm_info
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
            "warm_start": warm_info,
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
    seconds = {"train": train_s, "random_search": rs_s, "surrogate": sur_s,
               "evaluation": eval_s}
    table = (evaluation.format_table(ev, held, ref, n_eval, eN, eT) + "\n\n"
             + evaluation.format_budget(method, warm_info, n_rollouts, S * B, seconds, P))
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
            "estimator": settings["estimator"],
            "knobs": estimators.knob_report(base_hard, tuned, history),
        }
    summary = {
        "command": "tune", "status": "done", "out": str(out), "method": method,
        **training_summary,
        "seconds": {**seconds, "tuned": train_s + rs_s * n_warm / K},
        "warm_start": warm_info,
        "held_out_scenarios": sorted(held), "budget": eval_doc["protocol"]["budget"],
        "verdicts": verdicts,
        "evaluation": {sc: {label: {"objective": row["objective"], "delta": row["delta"],
                                    "versus": row["versus"]}
                            for label, row in rows.items()}
                       for sc, rows in ev.items()},
        "tuned_params": {n: float(getattr(tuned, n)) for n in TUNED},
        "surrogate": sur if sur is not None else {"skipped": no_relax},
        "files": {k: str(v) for k, v in files.items()},
    }
    sur_text = (surrogate.format_surrogate(sur) if sur is not None else
                f"Surrogate gap: not measured: the {eco_name} ecology has no relaxed step "
                f"({no_relax}).")
    return TuneResult(summary, table, sur_text)
