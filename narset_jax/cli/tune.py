"""``narset tune``: tune Narset's hyperparameters by gradient descent through rollouts.

    narset tune --scenario steady --scenario crisis --iters 40 --regions 256 --steps 100 \\
        --out out/tune [--json summary.json]

Trains with the relaxed controller (``soft`` hysteresis by default), checkpointing every
few iterations (``--resume`` continues bit for bit), then runs a random search with the
same number of rollouts and evaluates the defaults, the tuned params, the random search's
best and the simulator's baselines with the **hard** controller on held-out seeds and
held-out scenarios. Every rollout runs its scenario's recommended budget mode (the global
pool for ``spoofing``), as ``narset simulate`` does without ``--budget``, unless the
``--params`` file sets ``budget``, which then holds for every scenario. Writes to ``--out``:

- ``params.toml``: the tuned params (hard hysteresis), for ``narset simulate --params``;
  without a ``budget`` line unless ``--params`` fixed one, so that ``narset simulate``
  applies the scenario's recommended mode, as the evaluation did;
- ``random_search_params.toml``: the random search's best;
- ``history.json``: per-iteration loss, gradient norm, temperature; the run's settings;
- ``evaluation.json``: the evaluation (means, 95% t-intervals, paired differences);
- ``loss_curve.png``, ``params_before_after.png``;
- ``checkpoint.npz``: the resumable training state.

See ``docs/tuning.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from narset_jax.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "tune_default.toml"
CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = 2  # 2: per-scenario budget modes (format 1 used one mode for all)

# Config file layout: section -> key -> (setting name, type).
_CONFIG_KEYS: dict[str, dict[str, tuple[str, type]]] = {
    "optimiser": {
        "learning_rate": ("learning_rate", float),
        "clip_norm": ("clip_norm", float),
        "batch": ("batch", int),
        "checkpoint_every": ("checkpoint_every", int),
    },
    "relaxation": {
        "hysteresis": ("hysteresis", str),
        "anneal": ("anneal", float),
        "truncate": ("truncate", int),
        "remat": ("remat", bool),
    },
    "evaluation": {"seeds": ("eval_seeds", int)},
    "random_search": {"sigma": ("sigma", float)},
}
# Settings that determine the training run (and the random search); they must match on
# --resume. The evaluation settings and checkpoint_every may change.
_RUN_KEYS = (
    "scenarios",
    "iters",
    "regions",
    "steps",
    "batch",
    "learning_rate",
    "clip_norm",
    "hysteresis",
    "anneal",
    "truncate",
    "remat",
    "seed",
    "dtype",
    "sigma",
    "weights",
    "base_params",
    "budget",
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune",
        help="tune the controller's hyperparameters by gradient descent through rollouts",
        description=(
            "Differentiate the objective of whole simulated rollouts (relaxed hysteresis) "
            "with respect to alpha, beta, the thresholds, the dwell, the EWMA rates, the "
            "policy gains and the authority thresholds; optimise with adam; then compare "
            "against the defaults, the baselines and a random search with the same number "
            "of rollouts, with the hard controller on held-out seeds and scenarios. "
            "See docs/tuning.md."
        ),
    )
    p.add_argument("--scenario", action="append", default=None, metavar="NAME",
                   help="training scenario: a shipped name or a .toml path (repeatable)")
    p.add_argument("--iters", type=int, default=None, help="iterations K")
    p.add_argument("--regions", type=int, default=None, help="regions N per rollout")
    p.add_argument("--steps", type=int, default=None, help="windows T per rollout")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", default=None, metavar="PATH", help="write a summary as JSON")
    p.add_argument("--config", default=None, metavar="PATH",
                   help=f"settings TOML (default: the shipped {DEFAULT_CONFIG.name})")
    p.add_argument("--params", default=None, metavar="PATH",
                   help="starting params TOML (default: NarsetParams()); a budget line in "
                   "it fixes the budget mode for every scenario (otherwise each scenario's "
                   "recommended mode is used, as by narset simulate)")
    p.add_argument("--batch", type=int, default=None, help="seeds per scenario per iteration")
    p.add_argument("--lr", type=float, default=None, help="adam learning rate")
    p.add_argument("--clip", type=float, default=None, help="global-norm gradient clip")
    p.add_argument("--hysteresis", default=None, choices=("soft", "straight_through"),
                   help="relaxation used for the gradient")
    p.add_argument("--anneal", type=float, default=None, metavar="F",
                   help="anneal the temperatures geometrically to F times their value")
    p.add_argument("--truncate", type=int, default=None, metavar="W",
                   help="truncate backpropagation to windows of W steps (0: off)")
    p.add_argument("--no-remat", dest="remat", action="store_const", const=False, default=None,
                   help="do not wrap the simulated window in jax.checkpoint")
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="simulation dtype (default float32)")
    p.add_argument("--sigma", type=float, default=None,
                   help="random search: s.d. of perturbations in raw units")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="C",
                   help="write checkpoint.npz every C iterations")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop (with a checkpoint) once K iterations are done, as if "
                   "interrupted; continue later with --resume")
    p.add_argument("--holdout", action="append", default=None, metavar="NAME",
                   help="held-out evaluation scenario (repeatable; default: every shipped "
                   "scenario not trained on)")
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help="comma-separated baseline controllers to evaluate (default: all of "
                   "static_split, single_threshold, no_inertia, always_overdrive; 'none')")
    p.add_argument("--eval-seeds", type=int, default=None,
                   help="held-out evaluation seeds (>= 8)")
    p.add_argument("--eval-regions", type=int, default=None, help="regions for evaluation")
    p.add_argument("--eval-steps", type=int, default=None, help="windows for evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    return p


# ---------------------------------------------------------------------------------------
# Settings.


def _read_config(path: Path) -> dict[str, Any]:
    """Settings from a config TOML: ``{setting: value}`` plus ``"weights"``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise UserError(f"{path}: cannot read config: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: malformed TOML: {err}") from None
    import sims

    out: dict[str, Any] = {}
    known = set(_CONFIG_KEYS) | {"objective"}
    for section, table in data.items():
        if section not in known:
            raise UserError(
                f"{path}: unknown section [{section}]; valid: {', '.join(sorted(known))}"
            )
        if not isinstance(table, dict):
            raise UserError(f"{path}: {section} must be a [table]")
        if section == "objective":
            fields = sims.ObjectiveWeights.__dataclass_fields__
            weights = {}
            for key, value in table.items():
                if key not in fields:
                    raise UserError(
                        f"{path}: unknown [objective] weight {key!r}; valid: {', '.join(fields)}"
                    )
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise UserError(f"{path}: [objective] {key} must be a number, got {value!r}")
                weights[key] = float(value)
            out["weights"] = weights
            continue
        for key, value in table.items():
            if key not in _CONFIG_KEYS[section]:
                valid = ", ".join(_CONFIG_KEYS[section])
                raise UserError(f"{path}: unknown key [{section}] {key!r}; valid: {valid}")
            name, typ = _CONFIG_KEYS[section][key]
            ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise UserError(
                    f"{path}: [{section}] {key} must be {typ.__name__}, got {value!r}"
                )
            out[name] = value
    return out


def _settings(args) -> tuple[dict[str, Any], set[str]]:
    """Merge the shipped config, ``--config`` and flags. Returns the settings and the set
    of keys given explicitly (by ``--config`` or a flag)."""
    from narset_jax.params import NarsetParams

    settings = {
        "seed": 0,
        "dtype": "float32",
        "learning_rate": 0.05,
        "clip_norm": 1.0,
        "batch": 4,
        "checkpoint_every": 5,
        "hysteresis": "soft",
        "anneal": 1.0,
        "truncate": 0,
        "remat": True,
        "eval_seeds": 8,
        "sigma": 1.0,
        "weights": {},
    }
    settings.update(_read_config(DEFAULT_CONFIG))
    explicit: set[str] = set()
    if args.config is not None:
        user = _read_config(Path(args.config))
        if "weights" in user:
            user["weights"] = {**settings["weights"], **user["weights"]}
        settings.update(user)
        explicit |= set(user)
    flags = {
        "scenarios": args.scenario,
        "iters": args.iters,
        "regions": args.regions,
        "steps": args.steps,
        "batch": args.batch,
        "learning_rate": args.lr,
        "clip_norm": args.clip,
        "hysteresis": args.hysteresis,
        "anneal": args.anneal,
        "truncate": args.truncate,
        "remat": args.remat,
        "seed": args.seed,
        "dtype": args.dtype,
        "sigma": args.sigma,
        "checkpoint_every": args.checkpoint_every,
        "eval_seeds": args.eval_seeds,
    }
    for key, value in flags.items():
        if value is not None:
            settings[key] = value
            explicit.add(key)
    import sims

    try:
        settings["weights"] = sims.ObjectiveWeights(**settings["weights"]).to_dict()
    except (TypeError, ValueError) as err:
        raise UserError(f"bad objective weights: {err}") from None
    base = NarsetParams.from_toml(args.params) if args.params else NarsetParams()
    settings["base_params"] = base.replace(hysteresis="hard").to_dict()
    settings["base_source"] = args.params or "defaults"
    # The budget mode: fixed by a params file that sets it (for every scenario), else each
    # scenario's recommendation -- narset simulate's rule without --budget.
    settings["budget"] = base.budget if args.params and _sets_budget(args.params) else None
    if args.params:
        explicit |= {"base_params", "budget"}
    return settings, explicit


def _sets_budget(path) -> bool:
    """Whether a (valid, already read) params TOML sets ``budget``."""
    with open(path, "rb") as fh:
        return "budget" in tomllib.load(fh)


def _check_settings(s: dict[str, Any]) -> None:
    import sims

    for key, flag in (("scenarios", "--scenario"), ("iters", "--iters"),
                      ("regions", "--regions"), ("steps", "--steps")):
        if s.get(key) is None:
            raise UserError(f"{flag} is required (unless --resume finds a checkpoint)")
    for key, flag in (("iters", "--iters"), ("regions", "--regions"), ("steps", "--steps"),
                      ("batch", "--batch"), ("checkpoint_every", "--checkpoint-every")):
        if s[key] <= 0:
            raise UserError(f"{flag} must be a positive int, got {s[key]}")
    if s["truncate"] < 0:
        raise UserError(f"--truncate must be >= 0, got {s['truncate']}")
    if s["eval_seeds"] < 8:
        raise UserError(f"--eval-seeds must be >= 8 (95% intervals over >= 8 seeds), "
                        f"got {s['eval_seeds']}")
    for key, flag in (("learning_rate", "--lr"), ("clip_norm", "--clip"),
                      ("sigma", "--sigma")):
        if not s[key] > 0:
            raise UserError(f"{flag} must be > 0, got {s[key]}")
    if not 0 < s["anneal"] <= 1:
        raise UserError(f"--anneal must be in (0, 1], got {s['anneal']}")
    if s["hysteresis"] not in ("soft", "straight_through"):
        raise UserError(
            f"hysteresis must be 'soft' or 'straight_through', got {s['hysteresis']!r}"
        )
    try:
        sims.ObjectiveWeights(**s["weights"])
    except (TypeError, ValueError) as err:
        raise UserError(f"bad objective weights: {err}") from None


def _scenario_entries(names) -> list[dict[str, Any]]:
    import sims

    entries = []
    for name in names:
        sc = sims.load_scenario(name)
        entries.append({"name": name, "label": sc.name, "values": sc.without_metadata().to_dict()})
    return entries


def _run_config(s: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine the run, JSON-normalised (floats round-trip)."""
    cfg = {k: s[k] for k in _RUN_KEYS}
    cfg["scenarios"] = list(cfg["scenarios"])
    return json.loads(json.dumps(cfg))


# ---------------------------------------------------------------------------------------
# Checkpoints: one .npz (no pickle) holding the raw params, the optimiser state's leaves
# and the metadata (JSON text), written atomically.


def _save_checkpoint(path: Path, state, history, meta: dict[str, Any]) -> None:
    import jax
    import numpy as np

    from narset_jax.atomic import atomic_path
    from narset_jax.tune import TUNED

    arrays = {f"raw_{i}": np.asarray(state.raw[n]) for i, n in enumerate(TUNED)}
    for i, leaf in enumerate(jax.tree.leaves(state.opt_state)):
        arrays[f"opt_{i}"] = np.asarray(leaf)
    full = dict(meta, iteration=state.iteration, history=history.to_dict(),
                tuned=list(TUNED), format=CHECKPOINT_FORMAT)
    arrays["meta"] = np.array(json.dumps(full))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _read_checkpoint_meta(path: Path) -> dict[str, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: unreadable checkpoint: {err}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def _load_checkpoint(path: Path, template):
    """Restore ``TrainState`` and ``History`` into the structure of ``template`` (a fresh
    ``TrainState`` of the same run)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from narset_jax.tune import TUNED, History, TrainState

    meta = _read_checkpoint_meta(path)
    if meta.get("tuned") != list(TUNED):
        raise UserError(f"{path}: checkpoint tunes different fields than this version")
    with np.load(path, allow_pickle=False) as data:
        raw = {}
        for i, n in enumerate(TUNED):
            arr = data[f"raw_{i}"]
            ref = template.raw[n]
            if arr.shape != ref.shape or arr.dtype != ref.dtype:
                raise UserError(f"{path}: raw {n} has {arr.dtype}{arr.shape}, "
                                f"expected {ref.dtype}{ref.shape}")
            raw[n] = jnp.asarray(arr)
        leaves, treedef = jax.tree.flatten(template.opt_state)
        n_saved = sum(1 for k in data.files if k.startswith("opt_"))
        if n_saved != len(leaves):
            raise UserError(f"{path}: optimiser state has {n_saved} arrays, expected "
                            f"{len(leaves)}")
        new = []
        for i, ref in enumerate(leaves):
            arr = data[f"opt_{i}"]
            ref = np.asarray(ref)
            if arr.shape != ref.shape or arr.dtype != ref.dtype:
                raise UserError(f"{path}: optimiser array {i} has {arr.dtype}{arr.shape}, "
                                f"expected {ref.dtype}{ref.shape}")
            new.append(jnp.asarray(arr))
    state = TrainState(raw=raw, opt_state=jax.tree.unflatten(treedef, new),
                       iteration=int(meta["iteration"]))
    return state, History.from_dict(meta["history"]), meta


# ---------------------------------------------------------------------------------------
# Reporting.


def _fmt_ci(ci) -> str:
    return f"{ci['mean']:8.3f} [{ci['lo']:7.3f}, {ci['hi']:7.3f}]"


def _verdict(delta) -> str:
    if delta is None:
        return ""
    if delta["hi"] < 0:
        return "better"
    if delta["lo"] > 0:
        return "worse"
    return "no significant difference"


def format_table(evaluation: dict[str, Any], held_out: set[str], reference: str,
                 n_seeds: int, n_regions: int, n_steps: int) -> str:
    """A readable table of an evaluation (one block per scenario)."""
    lines = [
        f"Evaluation: hard hysteresis, {n_seeds} held-out seeds, N={n_regions}, T={n_steps}. "
        "J = objective (lower is better), mean [95% t-interval]; "
        f"dJ = paired difference vs {reference}.",
    ]
    head = (f"  {'controller':<17} {'J':>8} {'[95% CI]':>18}   {'dJ':>8} {'[95% CI]':>18}"
            f"  {'progress':>8} {'flap':>6} {'churn':>6} {'overdr':>6} {'unsafe':>6}"
            f" {'rollbk':>6} {'capture':>7}")
    for sc_name, rows in evaluation.items():
        tag = "held-out" if sc_name in held_out else "trained on"
        mode = next(iter(rows.values()), {}).get("budget")
        lines.append("")
        lines.append(f"{sc_name} ({tag}" + (f", budget {mode})" if mode else ")"))
        lines.append(head)
        for label, row in rows.items():
            d = row["delta"]
            dtxt = _fmt_ci(d) if d is not None else f"{'-':>8} {'':>18}"
            m = row["metrics"]
            lines.append(
                f"  {label:<17} {_fmt_ci(row['objective'])}   {dtxt}"
                f"  {m['progress']:8.3f} {m['flap_rate']:6.2f} {m['budget_churn']:6.1f}"
                f" {m['overdrive_fraction']:6.3f} {m['unsafe_lysis']:6.2f}"
                f" {m['rollbacks']:6.2f} {m['spoofer_capture']:7.3f}"
            )
        for label in ("tuned", "random_search"):
            if label in rows and rows[label]["delta"] is not None:
                lines.append(f"  -> {label} vs {reference}: {_verdict(rows[label]['delta'])}")
        for label, row in rows.items():
            for other, d in row.get("versus", {}).items():
                lines.append(f"  -> {label} vs {other}: dJ = {d['mean']:.3f} "
                             f"[{d['lo']:.3f}, {d['hi']:.3f}], {_verdict(d)}")
    return "\n".join(lines)


def _params_toml(params, header: list[str], budget: str | None) -> str:
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


# ---------------------------------------------------------------------------------------


def run(args) -> int:
    settings, explicit = _settings(args)
    out = Path(args.out)
    ckpt_path = out / CHECKPOINT
    stored = None
    if args.resume:
        if not ckpt_path.is_file():
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        stored = _read_checkpoint_meta(ckpt_path)
        current = dict(settings)
        for key in _RUN_KEYS:
            if key in explicit and key in stored["config"]:
                given = json.loads(json.dumps(current[key]))
                if given != stored["config"][key]:
                    raise UserError(f"--resume: {key} = {given!r} differs from the "
                                    f"checkpoint's {stored['config'][key]!r}")
        settings.update(stored["config"])
        settings["base_source"] = stored.get("base_source", "defaults")
    elif ckpt_path.exists():
        raise UserError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to "
                        "continue it, or choose another --out")
    _check_settings(settings)
    if args.stop_after is not None and args.stop_after <= 0:
        raise UserError(f"--stop-after must be a positive int, got {args.stop_after}")

    import jax

    if settings["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from tqdm import tqdm

    import sims
    from narset_jax import tune
    from narset_jax.atomic import write_json, write_text
    from narset_jax.params import NarsetParams
    from narset_jax.plots.tune import plot_loss_curve, plot_params

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
    train_budgets = [tune.scenario_params(base_hard, sc, budget).budget
                     for sc in train_scenarios]
    if stored is not None and stored.get("train_budgets") != train_budgets:
        raise UserError(f"--resume: the training scenarios' budget modes {train_budgets} "
                        f"differ from the checkpoint's {stored.get('train_budgets')}")
    holdout_names = args.holdout
    if holdout_names is None:
        holdout_names = [n for n in sims.SCENARIOS if n not in train_labels]
    holdout = {}
    for name in holdout_names:
        sc = sims.load_scenario(name)
        if sc.name in train_labels:
            raise UserError(f"--holdout {name!r} is also a training scenario")
        holdout[sc.name] = sc
    if not holdout:
        raise UserError("no held-out scenario: every shipped scenario is trained on; "
                        "pass --holdout PATH.toml")
    all_baselines = [c for c in sims.CONTROLLERS if c != "narset"]
    if args.baselines is None:
        baselines = all_baselines
    elif args.baselines.strip() == "none":
        baselines = []
    else:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
        for b in baselines:
            if b not in all_baselines:
                raise UserError(f"--baselines: unknown baseline {b!r}; valid: "
                                f"{', '.join(all_baselines)} (or 'none')")

    dtype = jnp.dtype(settings["dtype"]).type
    N, T, K = settings["regions"], settings["steps"], settings["iters"]
    eN = N if args.eval_regions is None else args.eval_regions
    eT = T if args.eval_steps is None else args.eval_steps
    if eN <= 0 or eT <= 0:
        raise UserError(f"--eval-regions and --eval-steps must be positive, got {eN} and {eT}")
    S, B = len(train_scenarios), settings["batch"]
    weights = sims.ObjectiveWeights(**settings["weights"])
    base = base_hard.replace(hysteresis=settings["hysteresis"])
    truncate = settings["truncate"] or None
    cfg = tune.TuneConfig(n_regions=N, n_steps=T, truncate=truncate,
                          checkpoint=settings["remat"], dtype=settings["dtype"])
    optimizer = tune.make_optimizer(settings["learning_rate"], settings["clip_norm"])
    meta = {
        "config": _run_config(settings),
        "scenario_values": [json.loads(json.dumps(e["values"])) for e in entries],
        "train_budgets": train_budgets,
        "base_source": settings["base_source"],
        "train_key": jax.random.key_data(tune.run_keys(settings["seed"], tune.STREAM_TRAIN))
        .tolist(),
    }
    template = tune.train_init(tune.from_params(base.astype(dtype), dtype), optimizer)
    state, history = template, tune.History()
    if stored is not None:
        state, history, old_meta = _load_checkpoint(ckpt_path, template)
        if old_meta.get("train_key") != meta["train_key"]:
            raise UserError(f"{ckpt_path}: PRNG key differs from the run's seed")

    print(
        f"narset tune: {K} iterations x {S} scenario(s) x {B} seeds = {K * S * B} rollouts of "
        f"N={N} regions x T={T} windows ({settings['hysteresis']} hysteresis"
        f"{', truncated to ' + str(truncate) if truncate else ''}"
        f"{', remat' if settings['remat'] else ''}; budget "
        + ", ".join(f"{lab} {b}" for lab, b in zip(train_labels, train_budgets))
        + ("" if budget is None else " (fixed by --params)") + "); "
        + (f"resuming at iteration {state.iteration}; " if stored is not None else "")
        + "compiling...",
        file=sys.stderr, flush=True,
    )
    bar = tqdm(total=K, initial=state.iteration, desc="narset tune", unit="it",
               file=sys.stderr, disable=args.no_progress)
    if history.loss:
        bar.set_postfix(loss=f"{history.loss[-1]:.4f}", gnorm=f"{history.grad_norm[-1]:.3g}")
    latest = {"state": state, "saved": state.iteration}
    every = settings["checkpoint_every"]

    def save(st):
        _save_checkpoint(ckpt_path, st, history, meta)
        latest["saved"] = st.iteration

    def callback(st, hist):
        latest["state"] = st
        bar.update(1)
        bar.set_postfix(loss=f"{hist.loss[-1]:.4f}", gnorm=f"{hist.grad_norm[-1]:.3g}")
        if st.iteration % every == 0 or st.iteration == K:
            save(st)

    t0 = time.perf_counter()
    try:
        state, history = tune.train(
            base, train_scenarios, iters=K, cfg=cfg, batch=B, seed=settings["seed"],
            weights=weights, learning_rate=settings["learning_rate"],
            clip_norm=settings["clip_norm"], anneal=settings["anneal"], budget=budget,
            state=state,
            history=history, stop_after=args.stop_after, callback=callback,
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
    if state.iteration < K:
        print(f"narset tune: stopped after {state.iteration} of {K} iterations; checkpoint "
              f"in {ckpt_path}; continue with --resume", file=sys.stderr)
        if args.json:
            write_json(args.json, {"command": "tune", "status": "stopped",
                                   "iteration": state.iteration, "iters": K,
                                   "checkpoint": str(ckpt_path)})
        return 0

    tuned = tune.hard(tune.to_params(state.raw, base_hard))
    n_rollouts = K * S * B

    # Random search with the same number of rollouts.
    rs_bar = tqdm(total=K, desc="random search", unit="cand", file=sys.stderr,
                  disable=args.no_progress)
    t1 = time.perf_counter()
    try:
        rs = tune.random_search(
            base_hard, train_scenarios, candidates=K, batch=B, n_regions=N, n_steps=T,
            seed=settings["seed"], sigma=settings["sigma"], weights=weights, budget=budget,
            dtype=dtype, progress=lambda i: rs_bar.update(1),
        )
    finally:
        rs_bar.close()
    rs_s = time.perf_counter() - t1

    # Evaluation: hard controller, held-out seeds, trained and held-out scenarios.
    ref = "defaults" if settings["base_source"] == "defaults" else "initial"
    candidates = {ref: (base_hard, "narset"), "tuned": (tuned, "narset"),
                  "random_search": (rs.params, "narset")}
    for c in baselines:
        candidates[c] = (base_hard, c)
    eval_scenarios = dict(zip(train_labels, train_scenarios))
    eval_scenarios.update(holdout)
    n_eval = settings["eval_seeds"]
    ev_bar = tqdm(total=len(eval_scenarios) * len(candidates), desc="evaluation",
                  unit="run", file=sys.stderr, disable=args.no_progress)
    t2 = time.perf_counter()
    try:
        evaluation = tune.evaluate(
            candidates, eval_scenarios, seeds=n_eval, n_regions=eN, n_steps=eT,
            seed=settings["seed"], weights=weights, reference=ref,
            pairs=[("tuned", "random_search")], budget=budget, dtype=dtype,
            progress=lambda: ev_bar.update(1),
        )
    finally:
        ev_bar.close()
    eval_s = time.perf_counter() - t2

    # Outputs.
    header = [f"narset tune: {K} iterations on {', '.join(train_labels)}; N={N}, T={T}, "
              f"batch {B}, seed {settings['seed']}", "hard hysteresis for simulation and "
              "deployment; see history.json and evaluation.json"]
    files = {
        "params": write_text(out / "params.toml", _params_toml(tuned, header, budget)),
        "random_search_params": write_text(
            out / "random_search_params.toml",
            _params_toml(rs.params, [f"narset tune: best of {K} random-search candidates"],
                         budget),
        ),
    }
    hist = history.to_dict()
    files["history"] = write_json(out / "history.json", {
        "settings": meta["config"], "history": hist,
        "random_search": {"scores": rs.scores.tolist(), "best": rs.best,
                          "rollouts": rs.rollouts},
    })
    held = set(holdout)
    eval_doc = {
        "protocol": {
            "hysteresis": "hard", "seeds": n_eval, "regions": eN, "steps": eT,
            "interval": "95% Student t: mean +- t(0.975, n-1) * sd / sqrt(n)",
            "reference": ref, "held_out_scenarios": sorted(held),
            "train_scenarios": train_labels,
            "budget": {sc: next(iter(rows.values()))["budget"]
                       for sc, rows in evaluation.items()},
            "budget_rule": ("each scenario's recommended mode, else the starting params' "
                            "(narset simulate without --budget)" if budget is None
                            else f"{budget} for every scenario (set by --params)"),
            "rollouts": {"gradient": n_rollouts, "random_search": rs.rollouts,
                         "note": "each gradient rollout also runs a backward pass"},
        },
        "results": evaluation,
    }
    files["evaluation"] = write_json(out / "evaluation.json", eval_doc)
    files["loss_curve"] = plot_loss_curve(hist, out / "loss_curve.png",
                                          random_search=rs.scores.tolist(), batch=S * B)
    files["params_plot"] = plot_params(
        {n: float(getattr(base_hard, n)) for n in tune.TUNED},
        {n: float(getattr(tuned, n)) for n in tune.TUNED},
        out / "params_before_after.png",
        random_search={n: float(getattr(rs.params, n)) for n in tune.TUNED},
    )
    table = format_table(evaluation, held, ref, n_eval, eN, eT)
    print(table)
    verdicts = {
        sc: {
            f"tuned vs {ref}": _verdict(rows["tuned"]["delta"]),
            f"random_search vs {ref}": _verdict(rows["random_search"]["delta"]),
            "tuned vs random_search": _verdict(rows["tuned"]["versus"].get("random_search")),
        }
        for sc, rows in evaluation.items()
    }
    if args.json:
        write_json(args.json, {
            "command": "tune", "status": "done", "out": str(out),
            "iterations": K, "rollouts": {"gradient": n_rollouts, "random_search": rs.rollouts},
            "final_loss": history.loss[-1], "final_grad_norm": history.grad_norm[-1],
            "skipped_steps": int(sum(not f for f in history.finite)),
            "seconds": {"train": train_s, "random_search": rs_s, "evaluation": eval_s},
            "held_out_scenarios": sorted(held), "budget": eval_doc["protocol"]["budget"],
            "verdicts": verdicts,
            "evaluation": {sc: {label: {"objective": row["objective"], "delta": row["delta"],
                                        "versus": row["versus"]}
                                for label, row in rows.items()}
                           for sc, rows in evaluation.items()},
            "tuned_params": {n: float(getattr(tuned, n)) for n in tune.TUNED},
            "files": {k: str(v) for k, v in files.items()},
        })
    return 0
