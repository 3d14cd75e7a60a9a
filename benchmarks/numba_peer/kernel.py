"""The Numba kernels of the peer: one window of one region (``_region_window``, the whole
closed loop in registers), and the loops over windows and regions (``run_parallel``, a
``prange`` over regions; ``run_serial``). Same formulas, in the same order of operations,
as the library's stages and ``sims/numpy_twin.py``; see the package docstring."""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without the bench extra
    numba = None

__all__ = ["COSTS", "numba", "run_parallel", "run_serial"]

# ---------------------------------------------------------------------------------------
# Constants (sims._rng, narset_jax.telemetry, narset_jax.budget, sims.ecologies.stylised).

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1
_STREAM = 0x85EBCA77
_IH_INV_SD = 1.0 / 147.80138777
_UNIFORM_SCALE = 1.0 / 65536.0
_COUNT_MAX = 1e9
_VALUE_MAX = 1e12
_LOSS_FLOOR = 1e-6
_ACOS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046,
         0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)
_SQRT3 = math.sqrt(3.0)
_CAP64, _CAP32 = 1e30, 1e8
_SPOOF_LSTM = 12.0
_PANICS_TO_ROLLBACK = 3
_TRAIT_WINDOW = 0xFFFFFFFF
COSTS = {"seed": 0, "convex": 1}


if numba is not None:
    _U = np.uint64
    _M1, _M2 = _U(0x7FEB352D), _U(0x846CA68B)
    _UMASK = _U(_MASK)
    _UGOLD = _U(_GOLDEN)
    _S16, _S15, _S8, _S24 = _U(16), _U(15), _U(8), _U(24)
    _B8, _B16 = _U(0xFF), _U(0xFFFF)
    _SK = tuple(_U((s * _STREAM) & _MASK) for s in range(9))
    _jit = njit(cache=True, error_model="numpy", fastmath=False)

    @_jit
    def _mix32(x):
        x = x ^ (x >> _S16)
        x = (x * _M1) & _UMASK
        x = x ^ (x >> _S15)
        x = (x * _M2) & _UMASK
        return x ^ (x >> _S16)

    @_jit
    def _step_base(k0, k1, t):
        return _mix32(_mix32(k0 ^ ((_U(t) * _UGOLD) & _UMASK)) ^ k1)

    @_jit
    def _normal(h):
        s = float((h & _B8) + ((h >> _S8) & _B8) + ((h >> _S16) & _B8) + (h >> _S24))
        return (s - 510.0) * _IH_INV_SD

    @_jit
    def _uniforms(h):
        lo = float(h & _B16)
        hi = float(h >> _S16)
        return (lo + 0.5) * _UNIFORM_SCALE, (hi + 0.5) * _UNIFORM_SCALE

    @_jit
    def _clip(x, lo, hi):
        return min(max(x, lo), hi)

    @_jit
    def _sign(x):
        if x > 0:
            return 1.0
        if x < 0:
            return -1.0
        return x * 0.0  # 0 (and NaN for NaN), as np.sign

    # --- the budget (narset_jax.budget, cost models, budget_pieces) -------------------

    @_jit
    def _cost(x, alpha, cost):
        over = max(x - 1, 0.0)
        if cost == 0:
            return min(x, 1.0) + alpha * over * over
        return x + alpha * over * over

    @_jit
    def _dcost(x, alpha, cost):
        over = max(x - 1, 0.0)
        if cost == 0:
            return 2 * alpha * over if x > 1 else 1.0
        return 1 + 2 * alpha * over

    @_jit
    def _over_inv(y, alpha, cost):
        if cost == 0:
            return math.sqrt(y / alpha)
        return 2 * y / (1 + math.sqrt(1 + 4 * alpha * y))

    @_jit
    def _overdrive(u, alpha, cost):
        if cost == 0:
            return alpha * u * u
        return u + alpha * u * u

    @_jit
    def _inverse(y, alpha, cost):
        y = max(y, 0.0)
        if y <= 1:
            return y
        return 1 + _over_inv(max(y - 1, 0.0), alpha, cost)

    @_jit
    def _acos(z):
        x = abs(z)
        poly = 0.0
        for j in range(len(_ACOS) - 1, -1, -1):
            poly = poly * x + _ACOS[j]
        r = math.sqrt(max(1 - x, 0.0)) * poly
        return math.pi - r if z < 0 else r

    @_jit
    def _cos_sin(y, is64):
        y2 = y * y
        c = 1.0
        s = 1.0
        for k in range(6 if is64 else 4, 0, -1):
            c = 1 - y2 / ((2 * k - 1) * (2 * k)) * c
            s = 1 - y2 / ((2 * k) * (2 * k + 1)) * s
        return c, y * s

    @_jit
    def _cbrt(y):
        a = abs(y)
        if not a > 0:
            return 0.0
        r = math.exp(math.log(a) / 3)
        r = r - (r * r * r - a) / (3 * r * r)
        return _sign(y) * r

    @_jit
    def _cubic_roots(b, c, d, is64):
        s = b / 3
        p = c - b * s
        q = d - s * c + 2 * s * s * s
        m = math.sqrt(max(-p / 3, 0.0))
        m3 = m * m * m
        three = (p < 0) and (abs(q) / 2 < m3)
        safe_m3 = m3 if three else 1.0
        cos3, sin3 = _cos_sin(_acos(_clip(-q / (2 * safe_m3), -1.0, 1.0)) / 3, is64)
        hi3 = 2 * m * cos3
        lo3 = -m * (cos3 + _SQRT3 * sin3)
        disc = max(q * q / 4 + p * p * p / 27, 0.0)
        big = -_cbrt(abs(q) / 2 + math.sqrt(disc)) * _sign(q)
        one = big + (-p / (3 * big) if big != 0 else 0.0)
        out0 = 0.0
        out1 = 0.0
        for j in range(2):
            if three:
                v = lo3 if j == 0 else hi3
            else:
                v = one
            for _ in range(2 if is64 else 1):
                f = (v * v + p) * v + q
                df = 3 * v * v + p
                step = f / (df if df != 0 else 1.0)
                if df != 0 and abs(step) <= 0.25 * (1 + abs(v)):
                    v = v - step
            if j == 0:
                out0 = v - s
            else:
                out1 = v - s
        return out0, out1

    @_jit
    def _over_linear_roots(a, C, alpha, cost, is64):
        k3 = 2 * alpha * alpha * 1.0
        if cost == 0:
            return _cubic_roots(0.0, (1.0 - 2 * alpha * 1.0 * C) / k3, -1.0 * a / k3, is64)
        b = 3 * alpha * 1.0 / k3
        c = (1.0 - 1.0 * (2 * alpha * C - 1)) / k3
        d = -(1.0 * a + 1.0 * C) / k3
        return _cubic_roots(b, c, d, is64)

    @_jit
    def _objective(xT, xE, sT, sE):
        return 1.0 * xT * (0.5 * xT - sT) + 1.0 * xE * (0.5 * xE - sE)

    @_jit
    def _project(tT, tE, B, alpha, cost, is64):
        """``(x_T, x_E, price)`` of clipped targets: the ten candidates, first argmin."""
        if _cost(tT, alpha, cost) + _cost(tE, alpha, cost) <= B:
            return tT, tE, 0.0
        cap = _CAP64 if is64 else _CAP32
        big = max(tT, tE)
        shrink = cap / big if big > cap else 1.0
        sT = tT * shrink
        sE = tE * shrink
        bT = 0.0
        bE = 0.0
        bf = np.inf
        found = False

        def offer(xT, xE, ok, bT, bE, bf, found):
            # np.argmin semantics: first minimum, and a NaN wins at once.
            if found and bf != bf:
                return bT, bE, bf, found
            f = _objective(xT, xE, sT, sE) if ok else np.inf
            if not found or f < bf or f != f:
                return xT, xE, f, True
            return bT, bE, bf, found

        X = _inverse(B, alpha, cost)
        J = _inverse(B - 1, alpha, cost)
        bT, bE, bf, found = offer(X, 0.0, True, bT, bE, bf, found)
        bT, bE, bf, found = offer(0.0, X, True, bT, bE, bf, found)
        bT, bE, bf, found = offer(1.0, J, B >= 1, bT, bE, bf, found)
        bT, bE, bf, found = offer(J, 1.0, B >= 1, bT, bE, bf, found)
        x_lin = (1.0 * sT + 1.0 * (B - sE)) / 2.0
        x_lin = _clip(x_lin, max(B - 1, 0.0), min(B, 1.0))
        bT, bE, bf, found = offer(x_lin, B - x_lin, B <= 2, bT, bE, bf, found)
        u_lo = _over_inv(max(B - 2, 0.0), alpha, cost)
        u_hi = _over_inv(max(B - 1, 0.0), alpha, cost)
        for swap in range(2):
            t_o = sE if swap else sT
            t_l = sT if swap else sE
            r0, r1 = _over_linear_roots(t_o - 1, B - 1 - t_l, alpha, cost, is64)
            for r in (r0, r1):
                u = _clip(r, u_lo, u_hi)
                x_l = 0.0 if r >= u_hi else max(B - 1 - _overdrive(u, alpha, cost), 0.0)
                if swap:
                    bT, bE, bf, found = offer(x_l, 1 + u, B > 1, bT, bE, bf, found)
                else:
                    bT, bE, bf, found = offer(1 + u, x_l, B > 1, bT, bE, bf, found)
        # Both in overdrive: the radial point on the circle (h = 0 seed, 1 / (2 alpha)).
        h = 0.0 if cost == 0 else 1 / (2 * alpha)
        R = math.sqrt(max((B - 2) / alpha + 2 * h * h, 0.0))
        vT = sT - 1 + h
        vE = sE - 1 + h
        nrm = math.sqrt(vT * vT + vE * vE)
        scale = R / (nrm if nrm > 0 else 1.0)
        uT = vT * scale - h
        uE = vE * scale - h
        ok = (B > 2) and (nrm > 0) and (uT >= 0) and (uE >= 0)
        bT, bE, bf, found = offer(1 + uT, 1 + uE, ok, bT, bE, bf, found)
        xT = min(bT, tT)
        xE = min(bE, tE)
        cT = _dcost(xT, alpha, cost) if xT > 0 else 0.0
        cE = _dcost(xE, alpha, cost) if xE > 0 else 0.0
        num = 1.0 * (tT - xT) * cT + 1.0 * (tE - xE) * cE
        den = cT * cT + cE * cE
        return xT, xE, max(num / (den if den > 0 else 1.0), 0.0)

    # --- one window of one region ----------------------------------------------------

    @_jit
    def _sanitised(v, lo, hi):
        f = math.isfinite(v)
        return _clip(v if f else 0.0, lo, hi), f

    @njit(cache=True, error_model="numpy", fastmath=False, inline="always")
    def _region_window(i, t, u_wave, u_center, P, SC, cost, is64, sim, ctl, tel, acc):
        # Sanitise (no allocation: ten scalars).
        v0, f0 = _sanitised(tel.loss[i], -_VALUE_MAX, _VALUE_MAX)
        v1, f1 = _sanitised(tel.rollbacks[i], 0.0, _COUNT_MAX)
        v2, f2 = _sanitised(tel.anomalies[i], 0.0, _COUNT_MAX)
        v3, f3 = _sanitised(tel.nonfinite[i], 0.0, _COUNT_MAX)
        v4, f4 = _sanitised(tel.lstm_health[i], 0.0, _VALUE_MAX)
        v5, f5 = _sanitised(tel.growth_ratio[i], 0.0, _VALUE_MAX)
        v6, f6 = _sanitised(tel.churn[i], 0.0, _COUNT_MAX)
        v7, f7 = _sanitised(tel.alpha_shock[i], 0.0, _VALUE_MAX)
        v8, f8 = _sanitised(tel.active_seeds[i], 0.0, _COUNT_MAX)
        v9, f9 = _sanitised(tel.fossilised_seeds[i], 0.0, _COUNT_MAX)
        n_bad = (10 - int(f0) - int(f1) - int(f2) - int(f3) - int(f4) - int(f5) - int(f6)
                 - int(f7) - int(f8) - int(f9))
        v2 = v2 + float(n_bad)
        vals = (v0, v1, v2, v3, v4, v5, v6, v7, v8, v9)
        fin = (f0, f1, f2, f3, f4, f5, f6, f7, f8, f9)
        valid = tel.valid[i]
        boundary = tel.boundary[i] and valid

        # Smooth: persistence filter and EWMA on the stability fields.
        stab_rate = (P.rate_rollbacks, P.rate_anomalies, P.rate_nonfinite,
                     P.rate_lstm_health)
        ew = (ctl.ewma_rollbacks, ctl.ewma_anomalies, ctl.ewma_nonfinite,
              ctl.ewma_lstm_health)
        mems = (ctl.mem_rollbacks, ctl.mem_anomalies, ctl.mem_nonfinite, ctl.mem_lstm_health)
        stab_idx = (1, 2, 3, 4)
        for j in range(4):
            k = stab_idx[j]
            ok = valid if k == 2 else (valid and fin[k])
            x = vals[k]
            mem = mems[j][i]
            filtered = min(x, mem)
            if ok:
                mems[j][i] = max(x, P.persist_decay * mem)
                old = ew[j][i]
                ew[j][i] = old + stab_rate[j] * (filtered - old)
        first = ctl.n_valid[i] == 0
        eff_rate = (P.rate_growth_ratio, P.rate_churn, P.rate_alpha_shock,
                    P.rate_active_seeds, P.rate_fossilised_seeds)
        eff_ew = (ctl.ewma_growth_ratio, ctl.ewma_churn, ctl.ewma_alpha_shock,
                  ctl.ewma_active_seeds, ctl.ewma_fossilised_seeds)
        for j in range(5):
            k = 5 + j
            if valid and fin[k]:
                old = eff_ew[j][i]
                eff_ew[j][i] = vals[k] if first else old + eff_rate[j] * (vals[k] - old)
        ok = valid and fin[0]
        first_loss = ctl.n_loss[i] == 0
        old = ctl.ewma_loss[i]
        loss = vals[0] if first_loss else old + P.rate_loss * (vals[0] - old)
        rel = (old - loss) / max(abs(old), _LOSS_FLOOR)
        rel = 0.0 if first_loss else _clip(rel, -1.0, 1.0)
        trend0 = ctl.trend[i]
        trend = trend0 + P.rate_trend * (rel - trend0)
        stalled = 1.0 if P.plateau_eps - trend >= 0 else 0.0
        plateau = min(stalled * (ctl.plateau[i] + 1), P.plateau_window)
        if ok:
            ctl.ewma_loss[i] = loss
            ctl.trend[i] = trend
            ctl.plateau[i] = plateau
            ctl.n_loss[i] = ctl.n_loss[i] + 1
        if valid:
            ctl.n_valid[i] = ctl.n_valid[i] + 1

        # Scores.
        inst = (
            ctl.ewma_rollbacks[i] * (1 / P.scale_rollbacks)
            + ctl.ewma_anomalies[i] * (1 / P.scale_anomalies)
            + ctl.ewma_nonfinite[i] * (1 / P.scale_nonfinite)
            + max(ctl.ewma_lstm_health[i] - P.lstm_warn, 0.0)
            * (1 / (P.lstm_critical - P.lstm_warn))
        )
        stability = 1 / (1 + inst)
        need = inst * stability
        improving = _clip(ctl.trend[i] * (1 / P.trend_ref), 0.0, 1.0)
        progress = 0.5 * (improving + 1 - ctl.plateau[i] * (1 / P.plateau_window))
        rent_green = min(0.5 * math.log1p(P.growth_green), 1.5)
        rent_red = min(0.5 * math.log1p(P.growth_red), 1.5)
        rent = min(0.5 * math.log1p(ctl.ewma_growth_ratio[i]), 1.5)
        f_rent = _clip((rent - rent_green) * (1 / (rent_red - rent_green)), 0.0, 1.0)
        ec = ctl.ewma_churn[i]
        f_churn = ec / (ec + P.churn_ref)
        es = ctl.ewma_alpha_shock[i]
        f_shock = es / (es + P.shock_ref)
        ea = ctl.ewma_active_seeds[i]
        f_active = ea / max(ea + ctl.ewma_fossilised_seeds[i], 1.0)
        w = 1 / (P.weight_rent + P.weight_churn + P.weight_shock + P.weight_active)
        efficiency = (
            (P.weight_rent * w) * f_rent
            + (P.weight_churn * w) * f_churn
            + (P.weight_shock * w) * f_shock
            + (P.weight_active * w) * f_active
        )

        # Hysteresis (hard gates).
        m = ctl.mode[i]
        g_in = 1.0 if need - P.theta_enter >= 0 else 0.0
        g_out = 1.0 if P.theta_exit - need >= 0 else 0.0
        enter = g_in * (1 - m) * (ctl.enter_count[i] + 1)
        exit_ = g_out * m * (ctl.exit_count[i] + 1)
        s_in = 1.0 if enter - P.k_enter + 0.5 >= 0 else 0.0
        s_out = 1.0 if exit_ - P.k_exit + 0.5 >= 0 else 0.0
        if valid:
            m = m * (1 - s_out) + (1 - m) * s_in
            ctl.mode[i] = m
            ctl.enter_count[i] = enter
            ctl.exit_count[i] = exit_

        # Policy targets and inertia.
        t_T_repair = P.gain_T_repair + P.gain_T_crisis * need
        t_T_consol = (P.gain_T_consol + P.gain_T_progress * progress
                      - P.gain_T_efficiency * efficiency)
        t_E_consol = P.gain_E_consol + P.gain_E_efficiency * efficiency
        t_T = max(t_T_consol + m * (t_T_repair - t_T_consol), 0.0)
        t_E = stability * (t_E_consol + m * (P.gain_E_repair - t_E_consol))
        tgt_T = ctl.target_T[i]
        tgt_E = ctl.target_E[i]
        if valid:
            tgt_T = tgt_T + P.beta * (t_T - tgt_T)
            tgt_E = tgt_E + P.beta * (t_E - tgt_E)
            ctl.target_T[i] = tgt_T
            ctl.target_E[i] = tgt_E
        ctl.step[i] = ctl.step[i] + 1
        ctl.staleness[i] = 0 if valid else ctl.staleness[i] + 1

        # Budget and authority tiers.
        cT = max(tgt_T if math.isfinite(tgt_T) else 0.0, 0.0)
        cE = max(tgt_E if math.isfinite(tgt_E) else 0.0, 0.0)
        x_T, x_E, _ = _project(cT, cE, P.pool, P.alpha, cost, is64)
        spent = _cost(x_T, P.alpha, cost) + _cost(x_E, P.alpha, cost)
        tier_T = 2.0 if (x_T >= P.tau_fossilise and boundary) else (
            1.0 if x_T >= P.tau_germinate else 0.0)
        tier_E = 2.0 if (x_E >= P.tau_lysis and boundary) else (
            1.0 if x_E >= P.tau_sedate else 0.0)

        # The ecology's window (sims.ecologies.stylised.sim_transition, hard).
        grow_ok = _clip(tier_T, 0.0, 1.0)
        fossilise_ok = _clip(tier_T - 1, 0.0, 1.0)
        sedate_ok = _clip(tier_E, 0.0, 1.0)
        lysis_ok = _clip(tier_E - 1, 0.0, 1.0)
        base = _step_base(_U(sim.k0[i]), _U(sim.k1[i]), t)
        z_loss = _normal(_mix32(base ^ _SK[0]))
        z_lstm = _normal(_mix32(base ^ _SK[1]))
        z_churn = _normal(_mix32(base ^ _SK[2]))
        z_health = _normal(_mix32(base ^ _SK[3]))
        u_panic, u_anom1 = _uniforms(_mix32(base ^ _SK[4]))
        u_anom2, u_nan = _uniforms(_mix32(base ^ _SK[5]))
        u_shock, u_spoof = _uniforms(_mix32(base ^ _SK[6]))
        u_drop, u_burst = _uniforms(_mix32(base ^ _SK[7]))
        u_boundary, _ = _uniforms(_mix32(base ^ _SK[8]))

        indep = u_shock < SC.shock_rate * (1 - SC.shock_corr)
        q_wave = min(SC.shock_rate * SC.shock_corr / SC.wave_width, 1.0)
        arc = abs(sim.pos[i] - u_center)
        arc = min(arc, 1 - arc)
        hit = indep or ((u_wave < q_wave) and (arc < 0.5 * SC.wave_width))
        stress = sim.stress[i] * SC.stress_decay + SC.shock_size * (1.0 if hit else 0.0)

        h = sim.health[i]
        s_active = sim.active[i]
        germ = SC.germ_rate * x_T * grow_ok
        cull = s_active * min(SC.cull_gain * max(sim.prev_x_T[i] - x_T, 0.0), 1.0)
        foss = SC.foss_rate * s_active * fossilise_ok * min(x_T, 1.0)
        over = max(x_T - 1, 0.0) + max(x_E - 1, 0.0)
        sedation = sedate_ok * min(x_E, 1.0)
        compact = lysis_ok * min(SC.lysis_rate * x_E, 1.0)
        unstable = 1.0 if SC.health_safe - h >= 0 else 0.0
        unsafe = lysis_ok * unstable
        alpha_shock = SC.alpha_per_op * (germ + foss) + SC.alpha_per_cull * cull
        thrash = germ * lysis_ok * x_E

        deficit = max(SC.health_eq - h, 0.0)
        damage = sim.fragility[i] * (
            SC.stress_damage * stress
            + SC.alpha_damage * alpha_shock
            + SC.thrash_damage * thrash
            + SC.overdrive_damage * over
        ) + SC.lysis_damage * unsafe * min(x_E, 1.0)
        health = (
            h
            + SC.recover_rate * (SC.health_eq - h)
            + SC.repair_gain * grow_ok * x_T * deficit * deficit
            + SC.sedate_gain * sedation * (1 - h)
            - damage
            + SC.process_noise * z_health
        )
        health = _clip(health, 0.0, 1.0)

        s_cap = sim.cap[i]
        s_bloat = sim.bloat[i]
        s_loss = sim.loss[i]
        growth_ratio = 1 + s_cap + s_bloat
        rent = min(0.5 * math.log1p(growth_ratio), 1.5)
        dead = s_bloat / growth_ratio
        eff = h * h * (1 - SC.rent_drag * (rent * (1 / 1.5))) * (1 - SC.bloat_drag * dead)
        gap = max(s_loss - (1 + 1 / (1 + s_cap)), 0.0)
        loss = (
            s_loss
            - sim.lr[i] * eff * gap / (1 + gap * (1 / SC.gap_sat))
            + SC.diverge * max(SC.health_diverge - h, 0.0)
        )
        cap = s_cap + SC.seed_cap * foss
        bloat = s_bloat * (1 - compact) + SC.seed_bloat * sim.bloat_prop[i] * foss
        active = s_active + germ - foss - cull
        fossil = sim.fossil[i] + foss

        unhealthy = (1 - h) ** 2
        p_panic = _clip(
            SC.panic_base + SC.panic_gain * unhealthy + SC.overdrive_panic * over
            + SC.unsafe_panic * unsafe, 0.0, 1.0,
        )
        panic = 1.0 if p_panic - u_panic >= 0 else 0.0
        count = panic * (sim.panic[i] + 1)
        rollback = 1.0 if count - (_PANICS_TO_ROLLBACK - 0.5) >= 0 else 0.0
        count = count * (1 - rollback)
        loss = loss + SC.rollback_cost * rollback
        health = health + rollback * SC.rollback_restore * (SC.health_eq - health)
        active = active * (1 - 0.5 * rollback)
        p_anom = _clip(
            SC.anomaly_base + SC.anomaly_gain * unhealthy + SC.anomaly_stress * stress
            + SC.overdrive_anomaly * over, 0.0, 1.0,
        )
        anomalies = ((1.0 if p_anom - u_anom1 >= 0 else 0.0)
                     + (1.0 if p_anom - u_anom2 >= 0 else 0.0))
        nonfinite = panic * (1.0 if u_nan < SC.nan_share else 0.0)

        rel = SC.noise * sim.noise_mult[i]
        ops = germ + cull + foss + 2 * lysis_ok * x_E
        loss_obs = sim.scale[i] * loss * (1 + rel * z_loss)
        lstm = (SC.lstm_base + SC.lstm_gain * (1 - health) ** 2) * max(1 + rel * z_lstm, 0.0)
        churn = ops * max(1 + rel * z_churn, 0.0)
        spoofer = sim.spoof_u[i] < SC.spoofer_fraction
        spike = spoofer and (u_spoof < SC.spoof_rate) and not sim.spiked[i]
        fake = SC.spoof_size * (1.0 if spike else 0.0)
        if spike:
            lstm = max(lstm, _SPOOF_LSTM * SC.spoof_size)
        outage = (u_drop < SC.dropout_persist) if sim.outage[i] else (u_drop < SC.dropout_rate)
        burst = (u_burst < SC.nan_persist) if sim.burst[i] else (u_burst < SC.nan_rate)
        if burst:
            loss_obs = np.nan
            lstm = np.inf

        tel.loss[i] = loss_obs
        tel.rollbacks[i] = rollback + fake
        tel.anomalies[i] = anomalies + 4 * fake
        tel.nonfinite[i] = nonfinite
        tel.lstm_health[i] = lstm
        tel.growth_ratio[i] = 1 + cap + bloat
        tel.churn[i] = churn
        tel.alpha_shock[i] = alpha_shock
        tel.active_seeds[i] = active
        tel.fossilised_seeds[i] = fossil
        tel.valid[i] = not outage
        tel.boundary[i] = (count < 0.5) and (u_boundary < SC.boundary_rate)

        sim.health[i] = health
        sim.loss[i] = loss
        sim.cap[i] = cap
        sim.bloat[i] = bloat
        sim.active[i] = active
        sim.fossil[i] = fossil
        sim.stress[i] = stress
        sim.panic[i] = count
        sim.prev_x_T[i] = x_T
        sim.prev_x_E[i] = x_E
        sim.outage[i] = outage
        sim.burst[i] = burst
        sim.spiked[i] = spike

        # Metric accumulators (sims.rollout.advance, hard).
        acc.switches[i] = acc.switches[i] + abs(m - acc.prev_mode[i])
        acc.churn[i] = acc.churn[i] + abs(x_T - acc.prev_x_T[i]) + abs(x_E - acc.prev_x_E[i])
        acc.overdrive[i] = acc.overdrive[i] + (1.0 if (x_T > 1 or x_E > 1) else 0.0)
        acc.unsafe[i] = acc.unsafe[i] + unsafe
        acc.rollbacks[i] = acc.rollbacks[i] + rollback
        acc.panics[i] = acc.panics[i] + panic
        acc.lysis[i] = acc.lysis[i] + lysis_ok
        acc.spend[i] = acc.spend[i] + spent
        acc.health[i] = acc.health[i] + health
        acc.mode[i] = acc.mode[i] + m
        acc.x_T[i] = acc.x_T[i] + x_T
        acc.x_E[i] = acc.x_E[i] + x_E
        acc.missing[i] = acc.missing[i] + (0.0 if valid else 1.0)
        acc.prev_mode[i] = m
        acc.prev_x_T[i] = x_T
        acc.prev_x_E[i] = x_E

    @njit(parallel=True, cache=True, error_model="numpy", fastmath=False)
    def run_parallel(P, SC, cost, is64, sim, ctl, tel, acc, g0, g1, t0, n_steps):
        n = sim.health.shape[0]
        for t in range(t0, t0 + n_steps):
            u_wave, u_center = _uniforms(_mix32(_step_base(g0, g1, t) ^ _SK[0]))
            for i in prange(n):
                _region_window(i, t, u_wave, u_center, P, SC, cost, is64, sim, ctl, tel, acc)

    @_jit
    def run_serial(P, SC, cost, is64, sim, ctl, tel, acc, g0, g1, t0, n_steps):
        """``run_parallel`` without threads (the same per-region function; compiles in about
        half the time, which the oracle test uses)."""
        n = sim.health.shape[0]
        for t in range(t0, t0 + n_steps):
            u_wave, u_center = _uniforms(_mix32(_step_base(g0, g1, t) ^ _SK[0]))
            for i in range(n):
                _region_window(i, t, u_wave, u_center, P, SC, cost, is64, sim, ctl, tel, acc)
