"""A region's network: a one-hidden-layer MLP host with ``K`` seed slots.

All functions here are for *one* region (unbatched); the ecology ``vmap``s them over
regions, so every region's parameters are one set of ``[N, ...]`` arrays.

- **Host:** ``h = relu(x W1 + b1) * hmask`` (``hmask`` switches off the hidden units beyond
  the region's width: a capacity-limited region has a narrow host), ``logits = h' Wo + bo``
  where ``h' = h + sum_k alpha_k branch_k``.
- **Seeds** (grafted branches into the hidden stream, fixed blueprint per slot):
  slots ``0 .. Kc-1`` are *conv* seeds, ``branch = flatten(relu(conv1d(x))) P`` (a 1-D
  convolution over the input signal, ``C`` channels, kernel ``k``, stride ``s``); slots
  ``Kc .. K-1`` are *MLP* residual blocks, ``branch = relu(h A + a) B``. Output projections
  start at zero, so a germinated seed changes nothing until it has trained.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from sims.ecologies.neural.data import N_CLASSES, SEQ_LEN

__all__ = ["Arch", "Net", "branches", "forward", "fresh_seeds", "host_params", "init_net",
           "merge_slots", "seed_params", "slot_mask_tree"]


class Arch(eqx.Module):
    """Static shapes (python ints): ``hidden`` H, ``n_slots`` K, ``seed_hidden`` R (MLP
    seeds), ``conv_channels`` C, ``conv_kernel`` k, ``conv_stride`` s."""

    hidden: int = eqx.field(static=True, default=32)
    n_slots: int = eqx.field(static=True, default=4)
    seed_hidden: int = eqx.field(static=True, default=8)
    conv_channels: int = eqx.field(static=True, default=4)
    conv_kernel: int = eqx.field(static=True, default=5)
    conv_stride: int = eqx.field(static=True, default=4)

    @property
    def n_conv(self) -> int:
        return (self.n_slots + 1) // 2

    @property
    def n_mlp(self) -> int:
        return self.n_slots // 2

    @property
    def conv_len(self) -> int:
        return (SEQ_LEN - self.conv_kernel) // self.conv_stride + 1


class Net(eqx.Module):
    """One region's parameters (host, then conv seeds, then MLP seeds)."""

    W1: jax.Array  # [L, H]
    b1: jax.Array  # [H]
    Wo: jax.Array  # [H, 10]
    bo: jax.Array  # [10]
    Wc: jax.Array  # [Kc, C, 1, k]
    bc: jax.Array  # [Kc, C]
    P: jax.Array  # [Kc, C * Lc, H]
    A: jax.Array  # [Km, H, R]
    a: jax.Array  # [Km, R]
    B: jax.Array  # [Km, R, H]


def seed_params(arch: Arch):
    """Parameter count of each slot's seed, ``[K]`` (python floats, by blueprint)."""
    c = arch.conv_channels
    conv = c * arch.conv_kernel + c + c * arch.conv_len * arch.hidden
    mlp = arch.hidden * arch.seed_hidden + arch.seed_hidden + arch.seed_hidden * arch.hidden
    return jnp.asarray([float(conv)] * arch.n_conv + [float(mlp)] * arch.n_mlp)


def host_params(arch: Arch, width):
    """The host's live parameter count at hidden ``width``: ``L w + w + H 10 + 10`` (the
    output layer reads the whole hidden stream, where seeds write)."""
    return SEQ_LEN * width + width + arch.hidden * N_CLASSES + N_CLASSES


def fresh_seeds(arch: Arch, key, dtype) -> Net:
    """Freshly initialised seeds for every slot (host fields zero; the caller merges)."""
    kc, ka = jax.random.split(key)
    H, R, C, k = arch.hidden, arch.seed_hidden, arch.conv_channels, arch.conv_kernel
    Kc, Km = arch.n_conv, arch.n_mlp
    return Net(
        W1=jnp.zeros((SEQ_LEN, H), dtype),
        b1=jnp.zeros((H,), dtype),
        Wo=jnp.zeros((H, N_CLASSES), dtype),
        bo=jnp.zeros((N_CLASSES,), dtype),
        Wc=jax.random.normal(kc, (Kc, C, 1, k), dtype) / jnp.sqrt(k).astype(dtype),
        bc=jnp.zeros((Kc, C), dtype),
        P=jnp.zeros((Kc, C * arch.conv_len, H), dtype),
        A=jax.random.normal(ka, (Km, H, R), dtype) / jnp.sqrt(H).astype(dtype),
        a=jnp.zeros((Km, R), dtype),
        B=jnp.zeros((Km, R, H), dtype),
    )


def init_net(arch: Arch, key, hmask, dtype) -> Net:
    """A fresh host (He-style normal init, narrow hosts masked) with empty (zero) slots."""
    k1, k2 = jax.random.split(key)
    H = arch.hidden
    empty = jax.tree.map(jnp.zeros_like, fresh_seeds(arch, k2, dtype))
    W1 = jax.random.normal(k1, (SEQ_LEN, H), dtype) * jnp.sqrt(2.0 / SEQ_LEN).astype(dtype)
    Wo = jax.random.normal(jax.random.fold_in(k1, 1), (H, N_CLASSES), dtype)
    return eqx.tree_at(
        lambda n: (n.W1, n.Wo),
        empty,
        (W1 * hmask, Wo / jnp.sqrt(H).astype(dtype)),
    )


def slot_mask_tree(net: Net, slot_mask, hmask) -> Net:
    """A tree like ``net`` of multipliers: the host's live units, and each slot's params
    times ``slot_mask[k]`` (``[K]``: conv slots first)."""
    dtype = net.W1.dtype
    m = slot_mask.astype(dtype)
    Kc = net.Wc.shape[0]
    mc, mm = m[:Kc], m[Kc:]
    one = jnp.ones((), dtype)
    return Net(
        W1=jnp.broadcast_to(hmask, net.W1.shape),
        b1=hmask,
        Wo=jnp.broadcast_to(one, net.Wo.shape),
        bo=jnp.broadcast_to(one, net.bo.shape),
        Wc=jnp.broadcast_to(mc[:, None, None, None], net.Wc.shape),
        bc=jnp.broadcast_to(mc[:, None], net.bc.shape),
        P=jnp.broadcast_to(mc[:, None, None], net.P.shape),
        A=jnp.broadcast_to(mm[:, None, None], net.A.shape),
        a=jnp.broadcast_to(mm[:, None], net.a.shape),
        B=jnp.broadcast_to(mm[:, None, None], net.B.shape),
    )


def merge_slots(net: Net, other: Net, take) -> Net:
    """``net`` with the seed params of slots where ``take`` (``[K]`` bool) from ``other``."""
    Kc = net.Wc.shape[0]
    tc, tm = take[:Kc], take[Kc:]

    def pick(mask, a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), b, a)

    return eqx.tree_at(
        lambda n: (n.Wc, n.bc, n.P, n.A, n.a, n.B),
        net,
        (pick(tc, net.Wc, other.Wc), pick(tc, net.bc, other.bc), pick(tc, net.P, other.P),
         pick(tm, net.A, other.A), pick(tm, net.a, other.a), pick(tm, net.B, other.B)),
    )


def branches(net: Net, x, h, stride: int):
    """Every slot's branch output ``[K, B, H]`` for inputs ``x`` ``[B, L]`` and host hidden
    ``h`` ``[B, H]`` (conv slots read ``x`` with the static ``stride``, MLP slots ``h``)."""

    def conv(Wc, bc, P):
        s = jax.lax.conv_general_dilated(
            x[:, None, :], Wc, window_strides=(stride,), padding="VALID"
        )  # [B, C, Lc]
        f = jax.nn.relu(s + bc[None, :, None])
        return f.reshape(f.shape[0], -1) @ P

    def mlp(A, a, B):
        return jax.nn.relu(h @ A + a) @ B

    out_c = jax.vmap(conv)(net.Wc, net.bc, net.P)
    out_m = jax.vmap(mlp)(net.A, net.a, net.B)
    return jnp.concatenate([out_c, out_m], axis=0)


def forward(net: Net, x, alpha, hmask, stride: int, *, side: bool = False):
    """Logits of a batch.

    **Arguments:** ``x`` ``[B, L]``; ``alpha`` ``[K]`` effective blend weights; ``hmask``
    ``[H]``; ``stride``: the conv seeds' (static); ``side``: also return every seed's
    *side* logits (host frozen by ``stop_gradient``, the seed added at full weight), which
    train seeds in TRAINING without blending them.

    **Returns:** ``(logits [B, 10], hidden [B, H], side_logits [K, B, 10] or None)``.
    """
    h = jax.nn.relu(x @ net.W1 + net.b1) * hmask
    br = branches(net, x, h, stride)
    hid = h + jnp.einsum("k,kbh->bh", alpha, br)
    logits = hid @ net.Wo + net.bo
    side_logits = None
    if side:
        frozen = jax.lax.stop_gradient(net)
        br_iso = branches(eqx.tree_at(lambda n: (n.Wc, n.bc, n.P, n.A, n.a, n.B), frozen,
                                      (net.Wc, net.bc, net.P, net.A, net.a, net.B)),
                          x, jax.lax.stop_gradient(h), stride)
        side_logits = (jax.lax.stop_gradient(hid)[None] + br_iso) @ frozen.Wo + frozen.bo
    return logits, hid, side_logits
