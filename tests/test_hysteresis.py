"""The hysteresis stage (``narset_jax/hysteresis.py``): the gate in its three variants, and
the mode's thresholds and dwell."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narset_jax.hysteresis import gate, init_hysteresis, update_mode
from narset_jax.params import NarsetParams

F64 = jnp.float64
P = NarsetParams(k_enter=3.0, k_exit=2.0).astype(F64)
HI, MID, LO = 0.6, 0.27, 0.05  # above theta_enter (0.4), between, below theta_exit (0.15)


def modes(params, need, variant="hard", update=None):
    """Mode after each window, for ``need`` of shape ``[T, N]``; returns (modes, final)."""
    need = jnp.asarray(need, F64)
    state = init_hysteresis(need.shape[1], F64)
    out = []
    for t in range(need.shape[0]):
        ok = jnp.ones(need.shape[1], bool) if update is None else jnp.asarray(update[t])
        state = update_mode(params, state, need[t], ok, variant)
        out.append(state.mode)
    return jnp.stack(out), state


def test_gate_variants():
    z = jnp.array([-1e-9, 0.0, 1e-9, -0.3, 0.3], F64)
    np.testing.assert_array_equal(gate(z, 0.1, "hard"), [0, 1, 1, 0, 1])
    soft = gate(z, 0.1, "soft")
    np.testing.assert_allclose(soft, jax.nn.sigmoid(z / 0.1), rtol=1e-15)
    assert float(soft[1]) == 0.5
    np.testing.assert_array_equal(gate(z, 0.1, "straight_through"), gate(z, 0.1, "hard"))
    with pytest.raises(ValueError, match="unknown hysteresis variant"):
        gate(z, 0.1, "sticky")


def test_straight_through_gate_has_the_soft_gradient():
    z, temp = jnp.array(0.05, F64), 0.1
    g = {v: jax.grad(lambda z, v=v: gate(z, temp, v))(z) for v in ("hard", "soft")}
    g["straight_through"] = jax.grad(lambda z: gate(z, temp, "straight_through"))(z)
    assert float(g["hard"]) == 0.0
    assert float(g["soft"]) > 0
    np.testing.assert_allclose(g["straight_through"], g["soft"], rtol=1e-15)


def test_enter_after_k_enter_consecutive_windows_exit_after_k_exit():
    need = np.array([HI, HI, HI, MID, MID, LO, LO, MID])[:, None]
    m, _ = modes(P, need)
    np.testing.assert_array_equal(m[:, 0], [0, 0, 1, 1, 1, 1, 0, 0])


def test_a_break_in_the_run_restarts_the_dwell():
    # Enter: HI HI (break) HI HI HI. Exit after entering: LO (break) LO LO.
    need = np.array([HI, HI, MID, HI, HI, HI, LO, MID, LO, LO])[:, None]
    m, _ = modes(P, need)
    np.testing.assert_array_equal(m[:, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 0])


def test_thresholds_are_inclusive():
    te, tx = float(P.theta_enter), float(P.theta_exit)
    p = NarsetParams(k_enter=1.0, k_exit=1.0).astype(F64)
    below_te, above_tx = np.nextafter(te, 0), np.nextafter(tx, 1)
    # Region 0 stays below theta_enter; 1 enters at it and holds just above theta_exit;
    # 2 enters at theta_enter and leaves at theta_exit.
    m, _ = modes(p, np.array([[below_te, te, te], [below_te, above_tx, tx]]))
    np.testing.assert_array_equal(m, [[0, 1, 1], [0, 1, 0]])


def test_need_between_the_thresholds_holds_either_mode():
    need = np.array([HI, HI, HI] + [MID] * 20)[:, None]
    m, state = modes(P, need)
    assert np.all(np.asarray(m[2:, 0]) == 1)
    # Counters only run towards the possible switch and stay below k.
    assert float(state.enter_count[0]) == 0 and float(state.exit_count[0]) == 0
    m, _ = modes(P, np.full((20, 1), MID))
    assert np.all(np.asarray(m) == 0)


def test_missing_windows_hold_the_state_and_the_count():
    # Two missing windows, whatever their need, neither break the run nor count towards it.
    need = np.array([[HI, HI], [HI, HI], [0.0, HI], [0.0, HI], [HI, HI]])
    update = np.array([True, True, False, False, True])[:, None] * np.ones(2, bool)
    m, _ = modes(P, need, update=update)
    np.testing.assert_array_equal(m, [[0, 0], [0, 0], [0, 0], [0, 0], [1, 1]])
    m, state = modes(P, need[:3], update=update[:3])
    np.testing.assert_array_equal(state.enter_count, [2, 2])


def test_regions_are_independent():
    rng = np.random.default_rng(0)
    need = rng.choice([HI, MID, LO], size=(25, 3))
    m, _ = modes(P, need)
    for r in range(3):
        alone, _ = modes(P, need[:, r : r + 1])
        np.testing.assert_array_equal(m[:, r], alone[:, 0])


def test_soft_mode_is_a_differentiable_weight():
    p = NarsetParams(hysteresis="soft", k_enter=2.0, k_exit=2.0).astype(F64)
    need = np.array([0.38, 0.42, 0.45, 0.41, 0.3])[:, None]
    m, _ = modes(p, need, "soft")
    v = np.asarray(m)
    assert np.all((v > 0) & (v < 1))  # a weight, never exactly 0 or 1 near the threshold

    def final_mode(theta):
        return modes(p.replace(theta_enter=theta), need, "soft")[0][-1, 0]

    g = jax.grad(final_mode)(jnp.asarray(0.4, F64))
    assert np.isfinite(float(g)) and float(g) < 0  # a higher threshold, less repair


def test_straight_through_is_hard_forward_with_a_gradient():
    need = np.array([HI, 0.41, 0.39, HI, HI, HI, LO, LO, 0.16, LO])[:, None]
    hard, _ = modes(P, need, "hard")
    st_params = P.replace(hysteresis="straight_through")
    st, _ = modes(st_params, need, "straight_through")
    np.testing.assert_array_equal(st, hard)

    def total(params, variant):
        return lambda theta: modes(params.replace(theta_enter=theta), need, variant)[0].sum()

    theta = jnp.asarray(0.4, F64)
    assert float(jax.grad(total(P, "hard"))(theta)) == 0.0
    assert float(jax.grad(total(st_params, "straight_through"))(theta)) != 0.0
