"""Neural scenarios: the params pytree of the neural ecology, and their TOML files.

A [`NeuralScenario`][] holds float leaves (learning rates, crisis rates, agent rule
constants; ``vmap``-able like [`sims.Scenario`][]), the MNIST-1D arrays (``data``) and
static metadata (name, description, the dataset's generator arguments and SHA-256).

Shipped files live in ``sims/ecologies/neural/scenarios/<name>.toml``. A file is flat
``key = value`` pairs; ``base = "<shipped name>"`` starts from a shipped one; the dataset
keys ``num_samples``, ``data_seed`` and ``n_val`` choose the generated dataset; unknown keys
are rejected by name.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from narset_jax._config import describe, plain_leaves, read_toml, reject_unknown
from sims.ecologies.neural.data import Data, make_data
from sims.scenario import ScenarioError

__all__ = ["NEURAL_SCENARIOS", "NEURAL_SCENARIO_DIR", "NeuralScenario", "load_neural_scenario"]

NEURAL_SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
NEURAL_SCENARIOS = ("steady", "crisis", "heterogeneous", "spoofing", "dropout")
_DATA_KEYS = {"num_samples": 4000, "data_seed": 42, "n_val": 256}
_META = ("name", "description", "dataset_args", "dataset_sha256")


def _as_float(v):
    return v if isinstance(v, jax.Array | jax.core.Tracer) else jnp.asarray(float(v))


def _f(default: float):
    return eqx.field(default=default, converter=_as_float)


class NeuralScenario(eqx.Module):
    """The neural ecology's params. Groups (see ``docs/neural.md``):

    - **Regions' variants:** ``lr`` (SGD-with-momentum step size), ``spread_lr`` (log-normal
      s.d.), ``momentum``; ``width_frac`` (host hidden width as a share of ``hidden``),
      ``spread_width`` (a region's width is ``width_frac * (1 - spread_width * u)``);
      ``noise`` (input noise s.d.), ``spread_noise``; ``max_shift`` (circular input shift,
      uniform in ``0 .. max_shift``); ``permute`` (share of regions with a random label
      permutation); ``class_subset`` (share of regions that learn only ``subset_size`` of
      the ten classes; the other classes' logits are masked).
    - **Crises:** ``lr_spike_rate``, ``lr_spike_mult`` (a window's step size is multiplied),
      ``spike_corr``, ``wave_width`` (share of spikes arriving as waves over an arc of the
      region ring); ``label_noise_rate``, ``label_noise`` (one-window bursts of random
      labels); ``switch_at`` (window of a task switch, 0 never), ``switch_fraction``.
    - **Telemetry:** ``spoofer_fraction``, ``spoof_rate``, ``spoof_size`` (fake spikes);
      ``dropout_rate``, ``dropout_persist`` (missing windows); ``boundary_rate``;
      ``grad_explode``, ``grad_collapse`` (gradient-norm anomaly thresholds).
    - **Agents:** ``ops_nominal``, ``cost_mult_max`` (as ``NarsetParams``), ``germ_nominal``,
      ``blend_rate``, ``train_windows``, ``hold_windows``, ``embargo_windows``,
      ``plateau_windows``, ``gain_min``, ``sedate_margin``, ``wake_margin``,
      ``lysis_margin``, ``overdrive_lr`` (the price of overdrive, see ``docs/neural.md``).
    """

    data: Data
    lr: jax.Array = _f(0.05)
    spread_lr: jax.Array = _f(0.0)
    momentum: jax.Array = _f(0.9)
    width_frac: jax.Array = _f(1.0)
    spread_width: jax.Array = _f(0.0)
    noise: jax.Array = _f(0.0)
    spread_noise: jax.Array = _f(0.0)
    max_shift: jax.Array = _f(0.0)
    permute: jax.Array = _f(1.0)
    class_subset: jax.Array = _f(0.0)
    subset_size: jax.Array = _f(5.0)
    lr_spike_rate: jax.Array = _f(0.0)
    lr_spike_mult: jax.Array = _f(100.0)
    spike_corr: jax.Array = _f(0.0)
    wave_width: jax.Array = _f(0.3)
    label_noise_rate: jax.Array = _f(0.0)
    label_noise: jax.Array = _f(0.5)
    switch_at: jax.Array = _f(0.0)
    switch_fraction: jax.Array = _f(0.0)
    spoofer_fraction: jax.Array = _f(0.0)
    spoof_rate: jax.Array = _f(0.3)
    spoof_size: jax.Array = _f(1.0)
    dropout_rate: jax.Array = _f(0.0)
    dropout_persist: jax.Array = _f(0.0)
    boundary_rate: jax.Array = _f(0.8)
    grad_explode: jax.Array = _f(50.0)
    grad_collapse: jax.Array = _f(1e-6)
    ops_nominal: jax.Array = _f(4.0)
    cost_mult_max: jax.Array = _f(10.0)
    germ_nominal: jax.Array = _f(1.0)
    blend_rate: jax.Array = _f(0.34)
    train_windows: jax.Array = _f(1.0)
    hold_windows: jax.Array = _f(1.0)
    embargo_windows: jax.Array = _f(2.0)
    plateau_windows: jax.Array = _f(2.0)
    gain_min: jax.Array = _f(0.01)
    sedate_margin: jax.Array = _f(0.02)
    wake_margin: jax.Array = _f(0.02)
    lysis_margin: jax.Array = _f(0.002)
    overdrive_lr: jax.Array = _f(0.5)
    name: str = eqx.field(static=True, default="custom")
    description: str = eqx.field(static=True, default="")
    dataset_args: tuple = eqx.field(static=True, default=())
    dataset_sha256: str = eqx.field(static=True, default="")

    @classmethod
    def float_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in (*_META, "data"))

    def replace(self, **changes) -> NeuralScenario:
        """A copy with some fields changed."""
        reject_unknown(changes, (*self.float_names(), *_META, "data"), ScenarioError,
                       "unknown NeuralScenario field(s)")
        return dataclasses.replace(self, **changes)

    def astype(self, dtype) -> NeuralScenario:
        """Float leaves (not the data) cast to ``dtype``."""
        return dataclasses.replace(
            self, **{k: jnp.asarray(getattr(self, k), dtype) for k in self.float_names()})

    def without_metadata(self) -> NeuralScenario:
        """Blank metadata, so jitted code compiles once per dataset shape."""
        return dataclasses.replace(self, name="custom", description="", dataset_args=(),
                                   dataset_sha256="")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the data left out): floats (nested lists for stacked scenarios),
        the metadata, and the dataset's generator arguments as ``name -> repr``."""
        out = plain_leaves(self, self.float_names())
        out.update(name=self.name, description=self.description,
                   dataset_args=dict(self.dataset_args), dataset_sha256=self.dataset_sha256)
        return out

    def recommended_params(self, params=None):
        from narset_jax.params import NarsetParams

        return NarsetParams() if params is None else params

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> NeuralScenario:
        """Build from ``key -> value`` (see the module docstring)."""
        where = f"{source}: " if source else ""
        data = dict(data)
        known = (*cls.float_names(), "name", "description", "base", *_DATA_KEYS)
        reject_unknown(data, known, ScenarioError, f"{where}unknown neural scenario key(s)")
        kwargs: dict[str, Any] = {}
        base = data.pop("base", None)
        if base is not None:
            if base not in NEURAL_SCENARIOS:
                raise ScenarioError(f"{where}base must name a shipped neural scenario "
                                    f"({', '.join(NEURAL_SCENARIOS)}), got {describe(base)}")
            kwargs = read_toml(NEURAL_SCENARIO_DIR / f"{base}.toml", ScenarioError, "scenario")
            kwargs.pop("base", None)
        kwargs.update(data)
        ds = {k: kwargs.pop(k, v) for k, v in _DATA_KEYS.items()}
        for key, value in kwargs.items():
            if key in ("name", "description"):
                if not isinstance(value, str):
                    raise ScenarioError(f"{where}{key} must be a string, got {describe(value)}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ScenarioError(f"{where}{key} must be a number, got {describe(value)}")
        for key, value in ds.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ScenarioError(f"{where}{key} must be a positive integer, "
                                    f"got {describe(value)}")
        try:
            arrays, info = make_data(ds["num_samples"], ds["data_seed"], ds["n_val"])
        except ValueError as err:
            raise ScenarioError(f"{where}{err}") from None
        args = tuple(sorted((k, repr(v)) for k, v in info["args"].items()))
        return cls(data=arrays, dataset_args=args, dataset_sha256=info["sha256"], **kwargs)


def load_neural_scenario(name_or_path, **overrides) -> NeuralScenario:
    """A shipped neural scenario by name (one of ``NEURAL_SCENARIOS``) or a TOML file by
    path; ``overrides`` are applied as if they were in the file (dataset keys included)."""
    if isinstance(name_or_path, NeuralScenario):
        return name_or_path.replace(**overrides) if overrides else name_or_path
    text = os.fspath(name_or_path)
    path = Path(text)
    if text in NEURAL_SCENARIOS:
        path = NEURAL_SCENARIO_DIR / f"{text}.toml"
    elif not (path.suffix == ".toml" or path.exists()):
        raise ScenarioError(f"unknown neural scenario {text!r}; valid: "
                            f"{', '.join(NEURAL_SCENARIOS)} (or a path to a .toml file)")
    if not path.is_file():
        raise ScenarioError(f"{path}: no such scenario file")
    data = read_toml(path, ScenarioError, "scenario")
    data.setdefault("name", path.stem)
    data.update(overrides)
    return NeuralScenario.from_dict(data, source=str(path))
