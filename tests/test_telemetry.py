"""The telemetry stage (``narset_jax/telemetry.py``): the ``Telemetry`` pytree and
``sanitise`` (casting, non-finite detection and counting, clipping, flags)."""

import jax.numpy as jnp
import numpy as np
import pytest

from narset_jax.telemetry import (
    BOOL_FIELDS,
    COUNT_MAX,
    FLOAT_FIELDS,
    VALUE_MAX,
    Telemetry,
    sanitise,
)

N = 4
F64 = jnp.float64


def test_field_names_numeric_then_flags():
    names = Telemetry.field_names()
    assert names == FLOAT_FIELDS + BOOL_FIELDS
    assert len(names) == 12 and names[-2:] == ("valid", "boundary")
    assert tuple(Telemetry.calm(N).to_dict()) == names


def test_from_dict_names_missing_and_unknown_keys():
    data = Telemetry.calm(N).to_dict()
    assert isinstance(Telemetry.from_dict(data), Telemetry)
    with pytest.raises(ValueError, match="missing field.*churn"):
        Telemetry.from_dict({k: v for k, v in data.items() if k != "churn"})
    with pytest.raises(ValueError, match="unknown field.*lost"):
        Telemetry.from_dict({**data, "lost": 1.0})
    with pytest.raises(ValueError, match="unknown field.*lost"):
        Telemetry.calm(N).replace(lost=1.0)
    with pytest.raises(ValueError, match="unknown field.*lost"):
        Telemetry.filled(N, lost=1.0)


def test_calm_crisis_filled_replace_and_stack():
    calm = Telemetry.calm(N, F64, churn=np.arange(N))
    assert calm.loss.shape == (N,) and calm.loss.dtype == F64 and calm.valid.dtype == bool
    np.testing.assert_array_equal(calm.churn, np.arange(N))
    assert float(calm.rollbacks[0]) == 0 and bool(calm.boundary.all())
    crisis = Telemetry.crisis(N, F64)
    assert float(crisis.lstm_health[0]) == 12.0 and float(crisis.anomalies[0]) == 4.0
    assert not bool(crisis.boundary.any()) and bool(crisis.valid.all())
    # replace broadcasts a scalar to the field's shape and dtype.
    r = calm.replace(loss=3, valid=False)
    assert r.loss.shape == (N,) and r.loss.dtype == F64 and float(r.loss[2]) == 3.0
    assert r.valid.dtype == bool and not bool(r.valid.any())
    stacked = Telemetry.stack([calm, crisis, calm])
    assert stacked.loss.shape == (3, N) and stacked.valid.shape == (3, N)
    assert float(stacked.lstm_health[1, 0]) == 12.0


def test_non_finite_readings_are_zeroed_counted_and_become_anomalies():
    nan, inf = np.nan, np.inf
    tel = Telemetry.calm(
        N,
        F64,
        loss=[nan, 1.0, 1.0, 1.0],
        lstm_health=[inf, 1.0, 1.0, 1.0],
        growth_ratio=[-inf, 1.5, nan, 1.5],
        anomalies=[2.0, 2.0, 2.0, 2.0],
    )
    s = sanitise(tel, F64)
    np.testing.assert_array_equal(s.n_nonfinite, [3, 0, 1, 0])
    assert s.n_nonfinite.dtype == jnp.int32
    # One anomaly per non-finite field, on top of the reported ones.
    np.testing.assert_array_equal(s.values["anomalies"], [5.0, 2.0, 3.0, 2.0])
    np.testing.assert_array_equal(s.finite["loss"], [False, True, True, True])
    np.testing.assert_array_equal(s.finite["growth_ratio"], [False, True, False, True])
    for k, v in s.values.items():
        assert np.all(np.isfinite(np.asarray(v))), k
    assert float(s.values["loss"][0]) == 0 and float(s.values["lstm_health"][0]) == 0
    # The raw record keeps what was given, for the decision log.
    assert np.isnan(float(s.raw.loss[0])) and np.isinf(float(s.raw.lstm_health[0]))


def test_clipping_to_physical_ranges():
    tel = Telemetry.calm(
        N,
        F64,
        loss=[-5.0, 1e300, -1e300, 0.5],
        rollbacks=[-2.0, 1e20, 3.0, 0.0],
        lstm_health=[-1.0, 1e300, 4.0, 0.0],
        alpha_shock=[-0.5, 0.1, 0.0, 0.0],
    )
    s = sanitise(tel, F64)
    # The loss may be negative; it is only bounded.
    np.testing.assert_array_equal(s.values["loss"], [-5.0, VALUE_MAX, -VALUE_MAX, 0.5])
    np.testing.assert_array_equal(s.values["rollbacks"], [0.0, COUNT_MAX, 3.0, 0.0])
    np.testing.assert_array_equal(s.values["lstm_health"], [0.0, VALUE_MAX, 4.0, 0.0])
    np.testing.assert_array_equal(s.values["alpha_shock"], [0.0, 0.1, 0.0, 0.0])
    np.testing.assert_array_equal(s.n_nonfinite, 0)


def test_float32_inputs_cannot_overflow_after_clipping():
    tel = Telemetry.calm(N, F64, rollbacks=1e30, loss=-1e30)
    s = sanitise(tel, jnp.float32)
    assert s.values["rollbacks"].dtype == jnp.float32
    assert float(s.values["rollbacks"][0]) == np.float32(COUNT_MAX)
    assert float(s.values["loss"][0]) == np.float32(-VALUE_MAX)


def test_numeric_flags_read_as_greater_than_half_and_nan_counts():
    # Flags given as numbers (``Telemetry.filled`` would cast them to bool first).
    data = Telemetry.calm(N, F64).to_dict()
    data["valid"] = jnp.array([0.7, 0.2, np.nan, 1.0])
    data["boundary"] = jnp.array([1.0, 1.0, 1.0, 0.4])
    tel = Telemetry.from_dict(data)
    s = sanitise(tel, F64)
    np.testing.assert_array_equal(s.valid, [True, False, False, True])
    assert s.valid.dtype == bool and s.raw.valid.dtype == bool
    # A missing window is never at a safe boundary.
    np.testing.assert_array_equal(s.boundary, [True, False, False, False])
    np.testing.assert_array_equal(s.raw.boundary, [True, True, True, False])
    np.testing.assert_array_equal(s.n_nonfinite, [0, 0, 1, 0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sanitise_casts_to_the_state_dtype(dtype):
    other = jnp.float64 if dtype == jnp.float32 else jnp.float32
    s = sanitise(Telemetry.calm(N, other), dtype)
    for k, v in s.values.items():
        assert v.dtype == dtype, k
    for k in FLOAT_FIELDS:
        assert getattr(s.raw, k).dtype == dtype, k
