"""The settings of a tuning run: defaults, the config TOML, and their checks.

A run's settings are the shipped ``tune_default.toml``, overridden by a user's config
TOML, overridden by explicit values (the ``narset tune`` flags). Every key is described
in ``docs/tuning.md``. Error messages name the ``narset tune`` flags.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sims
from narset_jax._config import describe
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from narset_jax.resources import check_fits, closed_loop_bytes
from sims.tune.estimators import DEFAULT_ESTIMATOR, SMOOTHING_SIGMA, resolve_estimator

__all__ = [
    "DEFAULTS",
    "DEFAULT_CONFIG",
    "ES_KEYS",
    "RUN_KEYS",
    "build_settings",
    "check_eval_memory",
    "check_settings",
    "read_config",
    "run_config",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "tune_default.toml"
"""The shipped settings file (read under every run's config)."""

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "dtype": "float32",
    "learning_rate": 0.05,
    "clip_norm": 1.0,
    "batch": 4,
    "checkpoint_every": 5,
    "estimator": DEFAULT_ESTIMATOR,
    "smoothing_sigma": SMOOTHING_SIGMA,
    "hysteresis": "soft",
    "anneal": 1.0,
    "truncate": 0,
    "remat": True,
    "eval_seeds": 8,
    "sigma": 1.0,
    "weights": {},
    "method": "grad",
    "es_strategy": "snes",
    "es_population": 8,
    "es_sigma": 0.5,
    "es_learning_rate": None,
    "ecology": "stylised",
    "warm_start": None,  # the method's default, sims.tune.search.WARM_START
}
"""Settings before any config file is read."""

# Config file layout: section -> key -> (setting name, type).
_CONFIG_KEYS: dict[str, dict[str, tuple[str, type]]] = {
    "optimiser": {
        "learning_rate": ("learning_rate", float),
        "clip_norm": ("clip_norm", float),
        "batch": ("batch", int),
        "checkpoint_every": ("checkpoint_every", int),
    },
    "relaxation": {
        "estimator": ("estimator", str),
        "smoothing_sigma": ("smoothing_sigma", float),
        "hysteresis": ("hysteresis", str),
        "anneal": ("anneal", float),
        "truncate": ("truncate", int),
        "remat": ("remat", bool),
    },
    "evaluation": {"seeds": ("eval_seeds", int)},
    "random_search": {"sigma": ("sigma", float), "warm_start": ("warm_start", float)},
    "es": {
        "strategy": ("es_strategy", str),
        "population": ("es_population", int),
        "sigma": ("es_sigma", float),
        "learning_rate": ("es_learning_rate", float),
    },
}

_TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}

RUN_KEYS = (
    "scenarios",
    "iters",
    "regions",
    "steps",
    "batch",
    "learning_rate",
    "clip_norm",
    "estimator",
    "smoothing_sigma",
    "hysteresis",
    "anneal",
    "truncate",
    "remat",
    "seed",
    "dtype",
    "sigma",
    "warm_start",
    "weights",
    "base_params",
    "budget",
)
"""Settings that determine the training run (and the random search); they must match on
``--resume``. The evaluation settings and ``checkpoint_every`` may change."""

ES_KEYS = ("method", "es_strategy", "es_population", "es_sigma", "es_learning_rate")
"""Run settings of ``--method es`` (the ``[es]`` table): part of an ES run's settings, as
``RUN_KEYS`` are; a gradient run's settings leave them out (its method is ``grad``)."""


def read_config(path: Path) -> dict[str, Any]:
    """Settings from a config TOML: ``{setting: value}`` plus ``"weights"``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise UserError(f"{path}: cannot read config: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: malformed TOML: {err}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise UserError(f"{path}: malformed TOML: nested too deeply") from None

    out: dict[str, Any] = {}
    known = set(_CONFIG_KEYS) | {"objective"}
    for section, table in data.items():
        if section not in known:
            raise UserError(
                f"{path}: unknown section [{section}]; valid: {', '.join(sorted(known))}"
            )
        if not isinstance(table, dict):
            raise UserError(f"{path}: {section} must be a [table], got {describe(table)}")
        if section == "objective":
            fields = sims.ObjectiveWeights.__dataclass_fields__
            weights = {}
            for key, value in table.items():
                if key not in fields:
                    raise UserError(
                        f"{path}: unknown [objective] weight {key!r}; valid: {', '.join(fields)}"
                    )
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise UserError(
                        f"{path}: [objective] {key} must be a number, got {describe(value)}"
                    )
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
                    f"{path}: [{section}] {key} must be {_TYPE_NAMES[typ]}, got "
                    f"{describe(value)}"
                )
            out[name] = value
    return out


def build_settings(
    overrides: Mapping[str, Any],
    *,
    config: str | Path | None = None,
    params: str | Path | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """Merge the shipped config, ``config`` and ``overrides``.

    **Arguments:**

    - ``overrides``: ``setting -> value``; a ``None`` value is not given (the flags).
    - ``config``: a user's settings TOML, or ``None``.
    - ``params``: the starting params TOML, or ``None`` for ``NarsetParams()``. A
      ``budget`` line in it fixes the budget mode for every scenario.

    **Returns:** the settings and the set of keys given explicitly (by ``config``, an
    override or ``params``).
    """
    settings = {**DEFAULTS, "weights": dict(DEFAULTS["weights"])}
    settings.update(read_config(DEFAULT_CONFIG))
    explicit: set[str] = set()
    if config is not None:
        user = read_config(Path(config))
        if "weights" in user:
            user["weights"] = {**settings["weights"], **user["weights"]}
        settings.update(user)
        explicit |= set(user)
    for key, value in overrides.items():
        if value is not None:
            settings[key] = value
            explicit.add(key)
    try:
        settings["weights"] = sims.ObjectiveWeights(**settings["weights"]).to_dict()
    except (TypeError, ValueError) as err:
        raise UserError(f"bad objective weights: {err}") from None
    base = NarsetParams.from_toml(params) if params else NarsetParams()
    settings["base_params"] = base.replace(hysteresis="hard").to_dict()
    settings["base_source"] = params or "defaults"
    # The budget mode: fixed by a params file that sets it (for every scenario), else each
    # scenario's recommendation -- narset simulate's rule without --budget.
    settings["budget"] = base.budget if params and _sets_budget(params) else None
    if params:
        explicit |= {"base_params", "budget"}
    resolve_estimator(settings, explicit)  # the estimator, and its hysteresis and anneal
    return settings, explicit


def _sets_budget(path) -> bool:
    """Whether a (valid, already read) params TOML sets ``budget``."""
    with open(path, "rb") as fh:
        return "budget" in tomllib.load(fh)


def check_settings(s: Mapping[str, Any]) -> None:
    """Raise a one-line ``UserError`` naming the flag of the first bad setting."""
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
    if s["warm_start"] is not None and not 0 <= s["warm_start"] < 1:
        raise UserError(f"--warm-start must be in [0, 1), got {s['warm_start']}")
    if not 0 < s["anneal"] <= 1:
        raise UserError(f"--anneal must be in (0, 1], got {s['anneal']}")
    if s["hysteresis"] not in ("soft", "straight_through", "saturating", "hard"):
        raise UserError(
            f"hysteresis must be 'soft' or 'straight_through', got {s['hysteresis']!r}"
        )
    if not s["smoothing_sigma"] > 0:
        raise UserError(f"--smoothing-sigma must be > 0, got {s['smoothing_sigma']}")
    try:
        sims.ObjectiveWeights(**s["weights"])
    except (TypeError, ValueError) as err:
        raise UserError(f"bad objective weights: {err}") from None
    check_training_memory(s)


def _itemsize(s: Mapping[str, Any]) -> int:
    return 8 if s.get("dtype") == "float64" else 4


def check_training_memory(s: Mapping[str, Any], *, available: int | None = None) -> None:
    """Refuse (one-line ``UserError`` with the estimate) a training run whose memory is
    beyond this machine: ``--batch`` seeds of each scenario, ``--regions`` each, run at
    once, with every window's carry kept for the backward pass (``--steps`` windows; at
    least [`narset_jax.resources.DECISION_COLUMNS_BYTES`][] per region-window, also with
    ``jax.checkpoint``). With ``method = "es"`` there is no backward pass, but the whole
    population's rollouts run at once. A lower bound: only sizes that cannot fit are
    refused."""
    rollouts = len(s["scenarios"]) * s["batch"]
    what = (f"--regions {s['regions']} x --steps {s['steps']} x {rollouts} rollouts per "
            f"iteration (--batch {s['batch']} x {len(s['scenarios'])} scenarios)")
    if s.get("method", "grad") == "es":
        population = int(s.get("es_population") or 1)
        copies, windows = rollouts * population, 0
        what += f" x {population} candidates"
    else:
        copies, windows = rollouts, rollouts * s["steps"]
    needed = closed_loop_bytes(
        s["regions"], itemsize=_itemsize(s), copies=copies, record_windows=windows
    )
    check_fits(needed, what, available=available)


def check_eval_memory(regions: int, dtype: str = "float32", *,
                      available: int | None = None) -> None:
    """Refuse (one-line ``UserError``) an ``--eval-regions`` beyond this machine: one
    rollout at a time, so the closed loop's state and temporaries over ``regions``."""
    if isinstance(regions, int) and regions > 0:
        needed = closed_loop_bytes(regions, itemsize=8 if dtype == "float64" else 4)
        check_fits(needed, f"--eval-regions {regions}", available=available)


def run_config(s: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that determine the run (``RUN_KEYS``, and ``ES_KEYS`` for
    ``--method es``), JSON-normalised (floats round-trip)."""
    keys = RUN_KEYS + (ES_KEYS if s.get("method", "grad") == "es" else ())
    # The ecology is recorded when it is not the stylised one (older runs' settings lack it).
    keys += ("ecology",) if s.get("ecology", "stylised") != "stylised" else ()
    cfg = {k: s[k] for k in keys}
    cfg["scenarios"] = list(cfg["scenarios"])
    return json.loads(json.dumps(cfg))
