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
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams

__all__ = [
    "DEFAULTS",
    "DEFAULT_CONFIG",
    "RUN_KEYS",
    "build_settings",
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
    "hysteresis": "soft",
    "anneal": 1.0,
    "truncate": 0,
    "remat": True,
    "eval_seeds": 8,
    "sigma": 1.0,
    "weights": {},
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
        "hysteresis": ("hysteresis", str),
        "anneal": ("anneal", float),
        "truncate": ("truncate", int),
        "remat": ("remat", bool),
    },
    "evaluation": {"seeds": ("eval_seeds", int)},
    "random_search": {"sigma": ("sigma", float)},
}

RUN_KEYS = (
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
"""Settings that determine the training run (and the random search); they must match on
``--resume``. The evaluation settings and ``checkpoint_every`` may change."""


def read_config(path: Path) -> dict[str, Any]:
    """Settings from a config TOML: ``{setting: value}`` plus ``"weights"``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise UserError(f"{path}: cannot read config: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: malformed TOML: {err}") from None

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


def run_config(s: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that determine the run (``RUN_KEYS``), JSON-normalised (floats
    round-trip)."""
    cfg = {k: s[k] for k in RUN_KEYS}
    cfg["scenarios"] = list(cfg["scenarios"])
    return json.loads(json.dumps(cfg))
