"""The neural ecology (``neural``): every region is a small network in real training on
MNIST-1D, grown and pruned by rule-based Tamiyo and Emrakul under Narset's limits, and
watched by Esper's governor. Its telemetry is measured, not modelled (``docs/neural.md``).

One window is ``steps`` optimiser steps (SGD with momentum, ``optax.trace``) on minibatches
of ``batch``, then an evaluation on the validation split (the loss, the probes), the
governor, the agents, and a test-accuracy evaluation. Everything is written for one region
and ``vmap``ped over regions, so the whole window of every region is one jitted call and a
region's trajectory depends only on its id, the key, the scenario and its own decisions.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from narset_jax.telemetry import Telemetry
from sims.checks import check_dtype, check_n_regions
from sims.ecologies.base import Ecology, Outcome
from sims.ecologies.neural import governor as gv
from sims.ecologies.neural import lifecycle as lc
from sims.ecologies.neural.agents import Slots, emrakul, tamiyo
from sims.ecologies.neural.data import (
    N_CLASSES,
    allowed_labels,
    class_index,
    class_subset,
    mask_logits,
    sample_in_classes,
    view,
)
from sims.ecologies.neural.network import (
    Arch,
    forward,
    fresh_seeds,
    merge_slots,
    seed_params,
    slot_mask_tree,
)
from sims.ecologies.neural.scenario import (
    NEURAL_SCENARIOS,
    NeuralScenario,
    load_neural_scenario,
)
from sims.ecologies.neural.state import TRAIT_WINDOW, NeuralState, init_region

__all__ = ["NEURAL", "LSTM_WARN", "Neural", "NeuralEvents"]

# The LSTM-health analogue's warning level (Esper: hidden RMS > 5 is a warning); a lysis
# while the region is above it, panicking or just damaged is "unsafe".
LSTM_WARN = 5.0
# Windows where a spoofer fakes a spike report the hidden RMS at least this high.
SPOOF_LSTM = 12.0
# An accuracy gain below this (0.5 points) is a plateau window (DESIGN.md section 4).
PLATEAU_GAIN = 0.005
# A region's class subset is drawn from its key folded with this window counter (never
# reached by a run; not the traits' counter, so the other traits' draws are unchanged).
SUBSET_WINDOW = TRAIT_WINDOW - 1


class NeuralEvents(NamedTuple):
    """What happened in one window (all ``[N]``): ``lysis`` (seeds lysed), ``unsafe``
    (lyses while the region was unstable), ``panic``, ``rollback`` (governor), ``health``
    (see ``docs/neural.md``), ``nonfinite`` (the validation loss was NaN/Inf), ``spike``
    (a spoofer faked a spike; bool), ``spoofer`` (bool), ``lr_spike`` (the window's step
    size was spiked; bool), ``test_acc``, ``loss`` (validation), ``params_trained`` (the
    parameters each optimiser step of the window updated: the host's live ones plus those
    of the seeds that trained; times ``steps``, the window's compute in parameter-steps)."""

    lysis: jax.Array
    unsafe: jax.Array
    panic: jax.Array
    rollback: jax.Array
    health: jax.Array
    nonfinite: jax.Array
    spike: jax.Array
    spoofer: jax.Array
    lr_spike: jax.Array
    test_acc: jax.Array
    loss: jax.Array
    params_trained: jax.Array


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _wmean(v, w):
    """Mean of ``v`` over its last axis with 0/1 weights ``w`` (a class subset's samples);
    exactly ``jnp.mean`` when every weight is 1."""
    w = w.astype(v.dtype)
    sub = jnp.sum(v * w, -1) / jnp.maximum(jnp.sum(w, -1), 1)
    return jnp.where(jnp.all(w > 0), jnp.mean(v, -1), sub)


def _per_region(tree, like):
    """Every leaf made to depend on a per-region array (the shard_map rule of
    [`sims.Ecology`][]): adds zeros of ``like`` (ors for bools)."""
    z = jnp.zeros_like(like)

    def fix(x):
        if x.dtype == bool:
            return x | z.astype(bool).reshape(z.shape + (1,) * (x.ndim - 1))
        return x + z.astype(x.dtype).reshape(z.shape + (1,) * (x.ndim - 1))

    return jax.tree.map(fix, tree)


class Neural(Ecology):
    """The neural ecology as an [`sims.Ecology`][]: params are a
    [`NeuralScenario`][sims.ecologies.neural.NeuralScenario].

    Static configuration (python ints): ``hidden`` (host width H), ``n_slots`` (K),
    ``seed_hidden``, ``conv_channels``, ``conv_kernel``, ``conv_stride``, ``steps``
    (optimiser steps per window), ``batch`` (minibatch size), ``block`` (0: one ``vmap``
    over all regions; ``k > 0``: ``lax.map`` over blocks of ``k`` regions, each block
    ``vmap``ped, which keeps a block's working set in the CPU's caches; the same maths,
    equal to float tolerance, not bit for bit; see ``docs/neural.md``, Benchmarks).
    """

    name: ClassVar[str] = "neural"
    scenarios: ClassVar[tuple[str, ...]] = NEURAL_SCENARIOS
    # Leaves are [N, ...] (regions first): the sharded rollout splits them along axis 0.
    region_axis: ClassVar[int] = 0
    constant_fields: ClassVar[tuple[str, ...]] = (
        "region", "rkey", "gkey", "perm", "perm2", "shift", "noise", "lr", "hmask", "host_n",
        "spoof_u", "pos", "u_switch", "test_acc0",
    )
    metric_fields: ClassVar[tuple[str, ...]] = ("test_acc", "stage", "host_n", "spoof_u")

    hidden: int = eqx.field(static=True, default=32)
    n_slots: int = eqx.field(static=True, default=4)
    seed_hidden: int = eqx.field(static=True, default=8)
    conv_channels: int = eqx.field(static=True, default=4)
    conv_kernel: int = eqx.field(static=True, default=5)
    conv_stride: int = eqx.field(static=True, default=4)
    steps: int = eqx.field(static=True, default=10)
    batch: int = eqx.field(static=True, default=32)
    block: int = eqx.field(static=True, default=0)

    @property
    def arch(self) -> Arch:
        return Arch(self.hidden, self.n_slots, self.seed_hidden, self.conv_channels,
                    self.conv_kernel, self.conv_stride)

    def load_scenario(self, name_or_path) -> NeuralScenario:
        return load_neural_scenario(name_or_path)

    def manifest_entries(self, params: NeuralScenario) -> dict:
        """The dataset (SHA-256, generator arguments, mnist1d version) and this ecology's
        static settings (network sizes, steps and batch per window)."""
        args = dict(params.dataset_args)
        version = args.get("mnist1d", "")
        settings = {f: getattr(self, f) for f in (
            "hidden", "n_slots", "seed_hidden", "conv_channels", "conv_kernel",
            "conv_stride", "steps", "batch")}
        if self.block:
            settings["block"] = self.block
        return {
            "ecology_settings": settings,
            "dataset": {"sha256": params.dataset_sha256, "args": args,
                        "mnist1d": version.strip("'\"")},
        }

    def prepare(self, params: NeuralScenario) -> NeuralScenario:
        if not isinstance(params, NeuralScenario):
            raise TypeError("the neural ecology's params are a NeuralScenario "
                            "(sims.ecologies.neural.load_neural_scenario), got "
                            f"{type(params).__name__}")
        return params.without_metadata()

    # ----------------------------------------------------------------- evaluation
    def _eval_logits(self, net, x, alpha, hmask, allowed):
        logits, hid, _ = forward(net, x, alpha, hmask, self.conv_stride)
        return mask_logits(logits, allowed), hid

    def _subset(self, sc, rkey):
        """The region's class subset (``[10]`` bool over the original classes; all True
        unless the scenario's ``class_subset`` share drew it)."""
        k = jax.random.fold_in(jax.random.wrap_key_data(rkey), SUBSET_WINDOW)
        return class_subset(k, sc.class_subset, sc.subset_size)

    def _evaluate(self, sc, net, alpha, hmask, perm, shift, allowed):
        """``(val loss, val acc, test acc, hidden RMS)`` without probes; losses and
        accuracies over the samples of the region's classes (``allowed``: permuted)."""
        d = sc.data
        dtype = alpha.dtype
        xv, yv = view(d.x_val.astype(dtype), d.y_val, perm, shift, 0, None, 0)
        lg, hid = self._eval_logits(net, xv, alpha, hmask, allowed)
        xt, yt = view(d.x_test.astype(dtype), d.y_test, perm, shift, 0, None, 0)
        lt, _ = self._eval_logits(net, xt, alpha, hmask, allowed)
        wv, wt = allowed[yv], allowed[yt]
        return (_wmean(_ce(lg, yv), wv), _wmean((lg.argmax(-1) == yv).astype(dtype), wv),
                _wmean((lt.argmax(-1) == yt).astype(dtype), wt), jnp.sqrt(jnp.mean(hid * hid)))

    def init(self, key, n_regions, params, *, dtype=jnp.float32, region_ids=None):
        n = check_n_regions(n_regions)
        dtype = check_dtype(dtype)
        ids = (jnp.arange(n, dtype=jnp.int32) if region_ids is None
               else jnp.asarray(region_ids).astype(jnp.int32))
        if ids.shape != (n,):
            raise ValueError(f"region_ids must have shape ({n},), got {ids.shape}")
        sc = params.astype(dtype)
        k_reg, k_glob = jax.random.split(key)
        rkey = jax.vmap(lambda r: jax.random.key_data(jax.random.fold_in(k_reg, r)))(ids)
        gkey = jnp.broadcast_to(jax.random.key_data(k_glob), rkey.shape) + 0 * rkey
        zeros = jnp.zeros((self.n_slots,), dtype)

        def one(rk, gk, r):
            subset = self._subset(sc, rk)

            def evaluate(net, hmask, perm, shift):
                return self._evaluate(sc, net, zeros, hmask, perm, shift,
                                      allowed_labels(subset, perm))

            return init_region(self.arch, sc, rk, gk, r, evaluate, dtype)

        return jax.vmap(one)(rkey, gkey, ids)

    def observe(self, params, state: NeuralState) -> Telemetry:
        z = jnp.zeros_like(state.loss)
        fossil = jnp.sum(state.stage == lc.FOSSILIZED, -1).astype(z.dtype)
        active = jnp.sum(lc.in_stages(state.stage, lc.ACTIVE), -1).astype(z.dtype)
        return Telemetry(
            loss=state.loss, rollbacks=z, anomalies=z, nonfinite=z, lstm_health=state.lstm,
            growth_ratio=self._growth(state.stage, state.host_n), churn=z, alpha_shock=z,
            active_seeds=active, fossilised_seeds=fossil, valid=~state.outage,
            boundary=state.boundary,
        )

    def _growth(self, stage, host_n):
        per = seed_params(self.arch).astype(host_n.dtype)
        fossil = jnp.sum(jnp.where(stage == lc.FOSSILIZED, per, 0), -1)
        return (host_n + fossil) / host_n

    # ----------------------------------------------------------------- one window
    def step(self, params, state, action, t, *, relax="hard"):
        if relax != "hard":
            raise NotImplementedError(
                "the neural ecology runs with hard hysteresis only: its lifecycle, governor "
                "and agents are discrete rules on real training (no relaxed form yet)")
        dtype = state.loss.dtype
        sc = params.astype(dtype)

        def cast(x, d):
            return jnp.asarray(x).astype(d) + jnp.zeros_like(state.loss, d)

        x_T, x_E = cast(action.x_T, dtype), cast(action.x_E, dtype)
        tier_T, tier_E = cast(action.tier_T, jnp.int32), cast(action.tier_E, jnp.int32)
        t = jnp.asarray(t, jnp.int32)
        if self.block > 0:
            new, tel, ev = jax.lax.map(lambda a: self._region(sc, *a, t),
                                       (state, x_T, x_E, tier_T, tier_E),
                                       batch_size=self.block)
        else:
            new, tel, ev = jax.vmap(self._region, in_axes=(None, 0, 0, 0, 0, 0, None))(
                sc, state, x_T, x_E, tier_T, tier_E, t)
        like = state.loss
        return _per_region(new, like), _per_region(tel, like), _per_region(ev, like)

    def _train(self, sc, s, key, lr, perm, label_noise, alpha, side_mask, train_mask,
               subset, allowed):
        """``steps`` SGD-with-momentum steps on minibatches of the region's classes
        (``subset``: original labels; ``allowed``: permuted). Returns ``(net, mom,
        anomalies, nonfinite)``."""
        d = sc.data
        dtype = lr.dtype
        tx = optax.trace(decay=sc.momentum)
        mask = slot_mask_tree(s.net, train_mask, s.hmask)
        n_train = d.x_train.shape[0]
        # Class subsets: sampled inside the subset (a scenario without them skips this).
        has_subset = sc.class_subset > 0
        index = class_index(d.y_train)

        def loss_fn(net, x, y):
            logits, _, side = forward(net, x, alpha, s.hmask, self.conv_stride, side=True)
            logits, side = mask_logits(logits, allowed), mask_logits(side, allowed)
            side_l = jax.vmap(lambda lg: jnp.mean(_ce(lg, y)))(side)
            main = jnp.mean(_ce(logits, y))
            return main + jnp.sum(jnp.where(side_mask, side_l, 0)), main

        def body(carry, i):
            net, mom = carry
            kb, kv = jax.random.split(jax.random.fold_in(key, i))
            idx = jax.random.randint(kb, (self.batch,), 0, n_train)
            idx = jax.lax.cond(
                has_subset,
                lambda: jnp.where(jnp.all(subset), idx, sample_in_classes(
                    jax.random.fold_in(kb, 1), index, subset, self.batch)),
                lambda: idx)
            x, y = view(d.x_train[idx].astype(dtype), d.y_train[idx], perm, s.shift, s.noise,
                        kv, label_noise, allowed)
            (_, main), g = jax.value_and_grad(loss_fn, has_aux=True)(net, x, y)
            gn = optax.tree.norm(g)
            upd, state = tx.update(g, optax.TraceState(trace=mom))
            upd = jax.tree.map(lambda u, m: -lr * u * m, upd, mask)
            net = optax.apply_updates(net, upd)
            anomaly = (gn > sc.grad_explode) | (gn < sc.grad_collapse)
            return (net, state.trace), (anomaly, ~jnp.isfinite(main))

        (net, mom), (anom, nonf) = jax.lax.scan(body, (s.net, s.mom), jnp.arange(self.steps))
        return net, mom, jnp.sum(anom).astype(dtype), jnp.sum(nonf).astype(dtype)

    def _probe(self, sc, net, s, perm, alpha_eff, x_E, allowed):
        """Validation loss, accuracy and hidden RMS, and every slot's ablation gain: on the
        whole validation split (Tamiyo's measurement) and on Emrakul's probe batch (its
        first ``n_val / max(x_E, 1)`` samples: overdrive probes on less data)."""
        d = sc.data
        dtype = alpha_eff.dtype
        k = self.n_slots
        xv, yv = view(d.x_val.astype(dtype), d.y_val, perm, s.shift, 0, None, 0)
        blended = lc.in_stages(s.stage, lc.BLENDED)
        nominal = jnp.where(s.stage == lc.FOSSILIZED, 1, s.alpha).astype(dtype)
        on = alpha_eff > 0
        flip = jnp.where(on, 0, jnp.where(blended, nominal, alpha_eff))
        variants = jnp.concatenate(
            [alpha_eff[None], jnp.where(jnp.eye(k, dtype=bool), flip[None], alpha_eff[None])])
        logits, hid = jax.vmap(lambda a: self._eval_logits(net, xv, a, s.hmask, allowed))(
            variants)
        ce = jax.vmap(lambda lg: _ce(lg, yv))(logits)  # [K + 1, V]
        n_val = ce.shape[1]
        w = (jnp.arange(n_val) < jnp.ceil(n_val / jnp.maximum(x_E, 1))).astype(dtype)
        inside = allowed[yv].astype(dtype)
        full = _wmean(ce, inside)
        wi = w * inside
        part = jnp.where(jnp.all(inside > 0), jnp.sum(ce * w, -1) / jnp.sum(w),
                         jnp.sum(ce * wi, -1) / jnp.maximum(jnp.sum(wi), 1))
        sign = jnp.where(on, 1, -1).astype(dtype)
        gain = jnp.where(blended, sign * (full[1:] - full[0]), 0)
        gain_probe = jnp.where(blended, sign * (part[1:] - part[0]), 0)
        acc = _wmean((logits[0].argmax(-1) == yv).astype(dtype), inside)
        rms = jnp.sqrt(jnp.mean(hid[0] * hid[0]))
        return full[0], acc, rms, gain, gain_probe

    def _region(self, sc, s: NeuralState, x_T, x_E, tier_T, tier_E, t):
        dtype = s.loss.dtype
        key = jax.random.fold_in(jax.random.wrap_key_data(s.rkey), t)
        k_train, k_u, k_seed = jax.random.split(key, 3)
        u = jax.random.uniform(k_u, (8,), dtype)
        u_wave, u_center = jax.random.uniform(
            jax.random.fold_in(jax.random.wrap_key_data(s.gkey), t), (2,), dtype)

        # This window's conditions: task, label noise, step-size spikes (with waves).
        switched = (sc.switch_at > 0) & (t >= sc.switch_at) & (s.u_switch < sc.switch_fraction)
        perm = jnp.where(switched, s.perm2, s.perm)
        subset = self._subset(sc, s.rkey)
        allowed = allowed_labels(subset, perm)
        label_noise = jnp.where(u[6] < sc.label_noise_rate, sc.label_noise, 0)
        indep = u[2] < sc.lr_spike_rate * (1 - sc.spike_corr)
        q_wave = jnp.minimum(sc.lr_spike_rate * sc.spike_corr / sc.wave_width, 1)
        arc = jnp.abs(s.pos - u_center)
        arc = jnp.minimum(arc, 1 - arc)
        lr_spike = indep | ((u_wave < q_wave) & (arc < 0.5 * sc.wave_width))
        over_T = jnp.maximum(x_T - 1, 0)
        lr = s.lr * jnp.where(lr_spike, sc.lr_spike_mult, 1) * (1 + sc.overdrive_lr * over_T)

        # Train.
        a0 = lc.effective_alpha(s.stage, s.alpha, s.sedated)
        live = lc.in_stages(s.stage, lc.LIVE)
        train_mask = live & (s.stage != lc.GERMINATED) & ~s.sedated
        net, mom, anomalies, nonf_steps = self._train(
            sc, s, k_train, lr, perm, label_noise, a0, s.stage == lc.TRAINING, train_mask,
            subset, allowed)
        s1 = eqx.tree_at(lambda q: (q.net, q.mom), s, (net, mom))

        # Measure, then the governor.
        loss, val_acc, rms, gain, gain_probe = self._probe(sc, net, s1, perm, a0, x_E, allowed)
        v = gv.judge(loss, s.hist, s.hist_n, s.panic)
        good = ~v.panic

        # The agents (skipped by a rollback).
        improved = val_acc > s.best_acc + PLATEAU_GAIN
        plateau = jnp.where(improved, 0, s.plateau + 1)
        slots = Slots(s.stage, s.age, s.alpha, s.sedated)
        tam = tamiyo(sc, slots, x_T, tier_T, u[0], plateau >= sc.plateau_windows, s.damaged,
                     gain)
        emr = emrakul(sc, tam.slots, x_E, tier_E, u[1], s.boundary, gain_probe, t)
        after = emr.slots
        fresh = fresh_seeds(self.arch, jax.random.fold_in(k_seed, 0), dtype)
        net_a = merge_slots(net, fresh, tam.germinate)
        keep = lc.in_stages(after.stage, lc.LIVE)
        mask = slot_mask_tree(net_a, keep, jnp.ones_like(s.hmask))
        net_a = jax.tree.map(lambda p, m: p * m, net_a, mask)
        keep_mom = slot_mask_tree(net_a, keep & ~tam.germinate, jnp.ones_like(s.hmask))
        mom_a = jax.tree.map(lambda p, m: p * m, mom, keep_mom)

        rb = v.rollback

        def pick(a, b):
            return jax.tree.map(lambda x, y: jnp.where(rb, x, y), a, b)

        # Esper's rollback (tolaria/governor.py, execute_rollback): restore the host and
        # the fossilised seeds from the snapshot, and prune every live experimental seed
        # (PRUNED, then the embargo), whose parameters are freed. Restoring experimental
        # seeds too would replay the window that diverged, every window.
        snap_slots = Slots(s.snap_stage, s.snap_age, s.snap_alpha, s.snap_sedated)
        restored = pick(snap_slots, after)
        culled = rb & lc.in_stages(restored.stage, lc.ACTIVE)
        slots_f = Slots(lc.apply(restored.stage, lc.PRUNED, culled),
                        jnp.where(culled, 0, restored.age),
                        jnp.where(culled, 0, restored.alpha).astype(restored.alpha.dtype),
                        restored.sedated & ~culled)
        kept = slot_mask_tree(net_a, ~culled, jnp.ones_like(s.hmask))
        net_f = jax.tree.map(lambda p, m: p * m, pick(s.snap_net, net_a), kept)
        mom_f = jax.tree.map(lambda p, m: p * m, pick(s.snap_mom, mom_a), kept)
        lyse = jnp.where(rb, False, emr.lyse)
        ops = jnp.where(rb, 0, tam.ops + emr.ops)
        a1 = lc.effective_alpha(slots_f.stage, slots_f.alpha, slots_f.sedated)
        _, _, test_acc, _ = self._evaluate(sc, net_f, a1, s.hmask, perm, s.shift, allowed)
        snap = good & ~rb
        hist, hist_n = gv.push(s.hist, s.hist_n, loss, snap)

        # Readings and events.
        unstable = (s.panic > 0) | s.damaged | ~(s.lstm <= LSTM_WARN)
        n_lyse = jnp.sum(lyse).astype(dtype)
        health = (1 - v.count.astype(dtype) / gv.PANICS_TO_ROLLBACK) * jnp.exp(
            -jnp.maximum(jnp.nan_to_num(rms, nan=1e3, posinf=1e3) - LSTM_WARN, 0) / LSTM_WARN)
        health = jnp.where(rb | v.nonfinite, 0, health)
        spoofer = s.spoof_u < sc.spoofer_fraction
        spike = spoofer & (u[3] < sc.spoof_rate) & ~s.spiked
        fake = sc.spoof_size * spike.astype(dtype)
        outage = jnp.where(s.outage, u[4] < sc.dropout_persist, u[4] < sc.dropout_rate)
        boundary = good & ~rb & (u[5] < sc.boundary_rate)
        stage_f = slots_f.stage
        tel = Telemetry(
            loss=loss,
            rollbacks=rb.astype(dtype) + fake,
            anomalies=anomalies + 4 * fake,
            nonfinite=nonf_steps + v.nonfinite.astype(dtype),
            lstm_health=jnp.where(spike, jnp.maximum(rms, SPOOF_LSTM * sc.spoof_size), rms),
            growth_ratio=self._growth(stage_f, s.host_n),
            churn=ops,
            alpha_shock=jnp.sum((a1 - a0) ** 2),
            active_seeds=jnp.sum(lc.in_stages(stage_f, lc.ACTIVE)).astype(dtype),
            fossilised_seeds=jnp.sum(stage_f == lc.FOSSILIZED).astype(dtype),
            valid=~outage,
            boundary=boundary,
        )
        ev = NeuralEvents(
            lysis=n_lyse, unsafe=n_lyse * unstable.astype(dtype), panic=v.panic.astype(dtype),
            rollback=rb.astype(dtype), health=health, nonfinite=v.nonfinite.astype(dtype),
            spike=spike, spoofer=spoofer, lr_spike=lr_spike, test_acc=test_acc, loss=loss,
            params_trained=s.host_n + jnp.sum(
                jnp.where(train_mask, seed_params(self.arch).astype(dtype), 0)),
        )
        snap_net = jax.tree.map(lambda a, b: jnp.where(snap, a, b), net_f, s.snap_net)
        snap_mom = jax.tree.map(lambda a, b: jnp.where(snap, a, b), mom_f, s.snap_mom)
        snap_s = jax.tree.map(lambda a, b: jnp.where(snap, a, b), slots_f, snap_slots)
        new = eqx.tree_at(
            lambda q: (q.net, q.mom, q.stage, q.age, q.alpha, q.sedated, q.snap_net, q.snap_mom,
                       q.snap_stage, q.snap_age, q.snap_alpha, q.snap_sedated, q.hist, q.hist_n,
                       q.panic, q.loss, q.val_acc, q.test_acc, q.lstm, q.best_acc, q.plateau,
                       q.damaged, q.boundary, q.outage, q.spiked),
            s,
            (net_f, mom_f, *slots_f, snap_net, snap_mom, *snap_s, hist, hist_n, v.count, loss,
             val_acc, test_acc, rms, jnp.where(rb, s.best_acc, jnp.maximum(s.best_acc, val_acc)),
             jnp.where(rb, 0, plateau).astype(jnp.int32), v.panic | rb, boundary, outage, spike),
        )
        return new, tel, ev

    def outcome(self, params, state: NeuralState) -> Outcome:
        """``progress``: mean over regions of ``(test_acc - 0.1) / 0.9`` (0 at chance, 1 at
        perfect test accuracy); ``growth_ratio``: mean ``(host + fossilised) / host``;
        ``spoofer``: the spoofer mask."""
        chance = 1.0 / N_CLASSES
        dtype = state.test_acc.dtype
        return Outcome(
            progress=jnp.mean((state.test_acc - chance) / (1 - chance)),
            growth_ratio=jnp.mean(self._growth(state.stage, state.host_n)),
            spoofer=state.spoof_u < params.astype(dtype).spoofer_fraction,
        )


NEURAL = Neural()
