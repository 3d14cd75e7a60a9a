"""The neural ecology's state (``[N, ...]`` arrays) and a fresh one (``init``)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from sims.ecologies.neural import governor as gv
from sims.ecologies.neural import lifecycle as lc
from sims.ecologies.neural.data import N_CLASSES
from sims.ecologies.neural.network import Arch, Net, host_params, init_net

__all__ = ["TRAIT_WINDOW", "NeuralState", "init_region"]

# Trait draws fold in this window counter (never reached by a run).
TRAIT_WINDOW = 0x7FFFFFFF


class NeuralState(eqx.Module):
    """Per-region state; every leaf has a leading region axis ``[N, ...]``.

    **Identity and randomness:** ``region`` (int32 ids), ``rkey`` (the region's key data,
    ``fold_in(k_regions, region)``), ``gkey`` (the run's global key data, the same in every
    region: it drives the correlated spike waves).

    **Traits (constant):** ``perm``, ``perm2`` (label permutations before and after a task
    switch), ``shift`` (int32 input shift), ``noise`` (input noise s.d.), ``lr`` (step
    size), ``hmask`` (``[H]`` live host units), ``host_n`` (host parameter count),
    ``spoof_u``, ``pos`` (position on the region ring), ``u_switch``, ``test_acc0``
    (test accuracy at init).

    **Training:** ``net`` ([`Net`][]), ``mom`` (the optax momentum trace, like ``net``);
    slots ``stage``, ``age``, ``alpha``, ``sedated`` (``[N, K]``).

    **Governor:** the last good snapshot ``snap_*`` (network, momentum, slots), ``hist``
    (``[N, 20]`` good losses), ``hist_n``, ``panic`` (consecutive panics).

    **Readings:** ``loss`` (validation), ``val_acc``, ``test_acc``, ``lstm`` (hidden RMS),
    ``best_acc``, ``plateau`` (windows without a 0.5-point gain), ``damaged`` (panic or
    rollback last window), ``boundary`` (last reported), ``outage``, ``spiked``.
    """

    region: jax.Array
    rkey: jax.Array
    gkey: jax.Array
    perm: jax.Array
    perm2: jax.Array
    shift: jax.Array
    noise: jax.Array
    lr: jax.Array
    hmask: jax.Array
    host_n: jax.Array
    spoof_u: jax.Array
    pos: jax.Array
    u_switch: jax.Array
    test_acc0: jax.Array
    net: Net
    mom: Net
    stage: jax.Array
    age: jax.Array
    alpha: jax.Array
    sedated: jax.Array
    snap_net: Net
    snap_mom: Net
    snap_stage: jax.Array
    snap_age: jax.Array
    snap_alpha: jax.Array
    snap_sedated: jax.Array
    hist: jax.Array
    hist_n: jax.Array
    panic: jax.Array
    loss: jax.Array
    val_acc: jax.Array
    test_acc: jax.Array
    lstm: jax.Array
    best_acc: jax.Array
    plateau: jax.Array
    damaged: jax.Array
    boundary: jax.Array
    outage: jax.Array
    spiked: jax.Array

    @property
    def n_regions(self) -> int:
        return self.region.shape[-1]


def init_region(arch: Arch, sc, rkey, gkey, region, evaluate, dtype) -> NeuralState:
    """One region's fresh state (unbatched; the ecology ``vmap``s it). ``rkey``, ``gkey``:
    key data; ``evaluate(net, hmask, perm, shift)`` -> ``(loss, val_acc, test_acc, lstm)``
    of the fresh network with every slot empty."""
    k = jax.random.fold_in(jax.random.wrap_key_data(rkey), TRAIT_WINDOW)
    kp, kp2, ku, kz, kn = jax.random.split(k, 5)
    u = jax.random.uniform(ku, (6,), dtype)
    z = jax.random.normal(kz, (2,), dtype)
    ident = jnp.arange(N_CLASSES, dtype=jnp.int32)
    perm = jnp.where(u[0] < sc.permute, jax.random.permutation(kp, N_CLASSES), ident)
    perm = perm.astype(jnp.int32)
    perm2 = jax.random.permutation(kp2, N_CLASSES).astype(jnp.int32)
    shift = jnp.floor(u[1] * (sc.max_shift + 1)).astype(jnp.int32)
    H = arch.hidden
    width = jnp.clip(jnp.ceil(H * sc.width_frac * (1 - sc.spread_width * u[2])), 1, H)
    hmask = (jnp.arange(H) < width).astype(dtype)
    net = init_net(arch, kn, hmask, dtype)
    mom = jax.tree.map(jnp.zeros_like, net)
    loss, val_acc, test_acc, lstm = evaluate(net, hmask, perm, shift)
    K = arch.n_slots
    stage = jnp.full((K,), lc.DORMANT, jnp.int32)
    age = jnp.zeros((K,), jnp.int32)
    alpha = jnp.zeros((K,), dtype)
    sedated = jnp.zeros((K,), bool)
    f = jnp.zeros((), dtype)
    b = jnp.zeros((), bool)
    return NeuralState(
        region=region, rkey=rkey, gkey=gkey, perm=perm, perm2=perm2, shift=shift,
        noise=sc.noise * jnp.exp(sc.spread_noise * z[0]),
        lr=sc.lr * jnp.exp(sc.spread_lr * z[1]),
        hmask=hmask, host_n=host_params(arch, width).astype(dtype),
        spoof_u=u[3], pos=u[4], u_switch=u[5], test_acc0=test_acc,
        net=net, mom=mom, stage=stage, age=age, alpha=alpha, sedated=sedated,
        snap_net=net, snap_mom=mom, snap_stage=stage, snap_age=age, snap_alpha=alpha,
        snap_sedated=sedated,
        hist=jnp.zeros((gv.HISTORY,), dtype), hist_n=jnp.zeros((), jnp.int32),
        panic=jnp.zeros((), jnp.int32),
        loss=loss, val_acc=val_acc, test_acc=test_acc, lstm=lstm, best_acc=val_acc,
        plateau=jnp.zeros((), jnp.int32), damaged=b, boundary=~b, outage=b, spiked=b | (f > 0),
    )
