"""NarsetParams: validation, TOML round trips, stacking; Telemetry builders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narset_jax.params import NarsetParams, ParamsError, stack_params
from narset_jax.telemetry import Telemetry


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"beta": 0.0}, "NarsetParams.beta must be in (0, 1], got 0"),
        ({"beta": 1.5}, "NarsetParams.beta must be in (0, 1], got 1.5"),
        ({"alpha": 0.0}, "NarsetParams.alpha must be in (0, inf), got 0"),
        ({"alpha": -1.0}, "NarsetParams.alpha must be in (0, inf), got -1"),
        ({"pool": 0.0}, "NarsetParams.pool must be in (0, inf), got 0"),
        ({"pool": float("nan")}, "NarsetParams.pool must be in (0, inf), got nan"),
        ({"rate_loss": 0.0}, "NarsetParams.rate_loss must be in (0, 1], got 0"),
        ({"k_enter": 0.5}, "NarsetParams.k_enter must be in [1, 1e+06], got 0.5"),
        ({"persist_decay": 1.0}, "NarsetParams.persist_decay must be in [0, 1), got 1"),
        ({"theta_exit": 0.5, "theta_enter": 0.4}, "NarsetParams.theta_exit must be < theta_enter"),
        ({"theta_exit": 0.4}, "NarsetParams.theta_exit must be < theta_enter"),
        ({"tau_sedate": 0.6}, "NarsetParams.tau_sedate must be < tau_lysis"),
        ({"tau_germinate": 0.5}, "NarsetParams.tau_germinate must be < tau_fossilise"),
        ({"lstm_warn": 10.0}, "NarsetParams.lstm_warn must be < lstm_critical"),
        ({"growth_red": 1.0}, "NarsetParams.growth_green must be < growth_red"),
        ({"cost": "cubic"}, "NarsetParams.cost must be one of 'seed' | 'convex', got 'cubic'"),
        ({"budget": "pooled"}, "NarsetParams.budget must be one of"),
        ({"hysteresis": "sticky"}, "NarsetParams.hysteresis must be one of"),
        ({"alpha": "2"}, "NarsetParams.alpha must be a number, got '2'"),
        ({"beta": True}, "NarsetParams.beta must be a number"),
    ],
)
def test_validation_names_field_and_range(changes, message):
    with pytest.raises(ValueError) as info:
        NarsetParams(**changes)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_defaults_and_leaves():
    p = NarsetParams()
    assert float(p.pool) == 1.5 and float(p.alpha) == 2.0
    assert (p.cost, p.budget, p.hysteresis) == ("seed", "region", "hard")
    leaves = jax.tree.leaves(p)
    assert len(leaves) == len(NarsetParams.tunable_names())
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in leaves)
    assert NarsetParams(k_enter=4).k_enter.dtype.kind == "f"  # ints become floats
    assert NarsetParams.field_range("beta") == "(0, 1]"


def test_validation_skipped_for_tracers():
    @jax.jit
    def build(beta):
        return NarsetParams(beta=beta).beta

    assert float(build(0.5)) == 0.5
    jax.grad(lambda a: NarsetParams(alpha=a).alpha ** 2)(2.0)


def test_replace_validates_and_rejects_unknown():
    p = NarsetParams().replace(alpha=3.0, hysteresis="soft")
    assert float(p.alpha) == 3.0 and p.hysteresis == "soft"
    with pytest.raises(ValueError, match="beta must be in"):
        p.replace(beta=2.0)
    with pytest.raises(ValueError, match="unknown NarsetParams field"):
        p.replace(gamma=1.0)


def test_toml_round_trip(tmp_path):
    p = NarsetParams(alpha=3.25, beta=0.1, k_enter=4.0, cost="convex", budget="global")
    path = tmp_path / "params.toml"
    path.write_text(p.to_toml())
    q = NarsetParams.from_toml(path)
    assert q.to_dict() == p.to_dict()
    assert (q.cost, q.budget) == ("convex", "global")
    # float32 leaves print as their short decimal form.
    assert NarsetParams().astype(jnp.float32).to_dict()["beta"] == 0.3


def test_toml_partial_file_uses_defaults(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('alpha = 3\nhysteresis = "soft"\n')
    p = NarsetParams.from_toml(path)
    assert float(p.alpha) == 3.0 and p.hysteresis == "soft" and float(p.beta) == 0.3


def test_toml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("alpha = 2.0\nalhpa = 3.0\nzeta = 1\n")
    with pytest.raises(ValueError) as info:
        NarsetParams.from_toml(path)
    msg = str(info.value)
    assert str(path) in msg and "alhpa" in msg and "zeta" in msg


def test_toml_malformed_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("alpha = 2.0\nbeta = = 0.3\n")
    with pytest.raises(ValueError) as info:
        NarsetParams.from_toml(path)
    msg = str(info.value)
    assert str(path) in msg and "line 2" in msg and "\n" not in msg


def test_toml_bad_value_and_missing_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('beta = 0\nalpha = "x"\n')
    with pytest.raises(ParamsError, match="NarsetParams.alpha must be a number"):
        NarsetParams.from_toml(path)
    path.write_text("beta = 0\n")
    with pytest.raises(ParamsError, match=r"p.toml: NarsetParams.beta must be in \(0, 1\]"):
        NarsetParams.from_toml(path)
    with pytest.raises(ParamsError, match="cannot read"):
        NarsetParams.from_toml(tmp_path / "missing.toml")


def test_stack_params():
    ps = [NarsetParams(alpha=a, beta=b) for a, b in ((2.0, 0.2), (3.0, 0.5), (4.0, 1.0))]
    s = stack_params(ps)
    assert s.alpha.shape == (3,) and s.cost == "seed"
    np.testing.assert_array_equal(s.beta, [0.2, 0.5, 1.0])
    also = jax.tree.map(lambda *xs: jnp.stack(xs), *ps)
    assert jax.tree.structure(also) == jax.tree.structure(s)
    assert s.to_dict()["alpha"] == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="hysteresis differs"):
        stack_params([NarsetParams(), NarsetParams(hysteresis="soft")])
    # Validation of array-valued params checks every element.
    with pytest.raises(ValueError, match="beta must be in"):
        NarsetParams(beta=np.array([0.5, 0.0]))


def test_telemetry_builders():
    assert Telemetry.field_names() == tuple(
        (
            "loss rollbacks anomalies nonfinite lstm_health growth_ratio churn alpha_shock "
            "active_seeds fossilised_seeds valid boundary"
        ).split()
    )
    t = Telemetry.calm(5, rollbacks=2.0)
    assert t.rollbacks.shape == (5,) and float(t.rollbacks[0]) == 2.0
    assert t.valid.dtype == bool and t.loss.dtype == jnp.float32
    d = t.to_dict()
    assert Telemetry.from_dict(d).to_dict().keys() == d.keys()
    with pytest.raises(ValueError, match="missing field"):
        Telemetry.from_dict({k: v for k, v in d.items() if k != "loss"})
    with pytest.raises(ValueError, match="unknown field"):
        Telemetry.from_dict({**d, "los": d["loss"]})
    seq = Telemetry.stack([t, Telemetry.crisis(5)])
    assert seq.loss.shape == (2, 5)
