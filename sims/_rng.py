"""Counter-based random numbers for the simulator: uint32 integer hashing, no PRNG state.

Every region owns two uint32 key words, derived once from ``jax.random.fold_in(key, id)``.
A draw is a pure function of (key words, window, stream):

    base   = mix(mix(k0 ^ (t * GOLDEN)) ^ k1)          # once per region and window
    draw_s = mix(base ^ (s * STREAM))                   # once per stream

``mix`` is the ``lowbias32`` finaliser (xor-shift, multiply, xor-shift, multiply, xor-shift),
a bijection on uint32 with good avalanche. A draw depends only on the region's own words and
counters, never on array positions, so results do not depend on how regions are batched or
sharded. See ``docs/simulator.md`` ("Random numbers").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["key_words", "mix32", "normal", "step_base", "stream", "uniform_pair"]

_GOLDEN = 0x9E3779B1
_STREAM = 0x85EBCA77
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
# Irwin-Hall(4) of bytes: mean 4 * 127.5, standard deviation sqrt(4 * (256^2 - 1) / 12).
_IH_MEAN = 510.0
_IH_INV_SD = 1.0 / 147.80138777

U32 = jnp.uint32


def mix32(x):
    """The ``lowbias32`` integer finaliser on a uint32 array."""
    x = x ^ (x >> 16)
    x = x * U32(_M1)
    x = x ^ (x >> 15)
    x = x * U32(_M2)
    return x ^ (x >> 16)


def key_words(key, ids):
    """Per-id key words ``(k0, k1)``, uint32 ``[N]`` each, from ``fold_in(key, id)``.

    **Arguments:**

    - ``key``: a typed PRNG key or a raw ``uint32`` key array.
    - ``ids``: ``[N]`` integer ids.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = lambda k: jax.random.key_data(k)  # noqa: E731
    else:
        data = lambda k: k  # noqa: E731
    words = jax.vmap(lambda i: data(jax.random.fold_in(key, i)))(jnp.asarray(ids))
    words = words.reshape(words.shape[0], -1).astype(U32)
    return words[:, 0], words[:, -1]


def step_base(k0, k1, t):
    """The per-window base hash of every region (uint32 ``[N]``)."""
    t = U32(t) if isinstance(t, int) else jnp.asarray(t).astype(U32)
    return mix32(mix32(k0 ^ (t * U32(_GOLDEN))) ^ k1)


def stream(base, s: int):
    """Stream ``s`` (a Python int) of a base hash: an independent uint32 draw."""
    return mix32(base ^ U32((s * _STREAM) & 0xFFFFFFFF))


def uniform_pair(h, dtype):
    """Two uniforms in (0, 1) from the low and high 16 bits of a uint32 draw."""
    lo = (h & U32(0xFFFF)).astype(dtype)
    hi = (h >> 16).astype(dtype)
    scale = 1.0 / 65536.0
    return (lo + 0.5) * scale, (hi + 0.5) * scale


def normal(h, dtype):
    """An approximately standard normal draw: the standardised sum of the four bytes of a
    uint32 (Irwin-Hall with n = 4; exact mean and variance, tails cut at +-3.45)."""
    s = (
        (h & U32(0xFF)) + ((h >> 8) & U32(0xFF)) + ((h >> 16) & U32(0xFF)) + (h >> 24)
    ).astype(dtype)
    return (s - _IH_MEAN) * _IH_INV_SD
