"""Argument checks shared by the closed-loop modules (rollouts, ecologies, sharding): each
raises a ``ValueError`` naming the argument and what it must be."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["check_dtype", "check_n_regions", "check_n_steps"]


def check_n_regions(n_regions) -> int:
    """``n_regions`` if it is a positive int."""
    if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions <= 0:
        raise ValueError(f"n_regions must be a positive int, got {n_regions!r}")
    return n_regions


def check_n_steps(n_steps) -> int:
    """``n_steps`` if it is a positive int."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps <= 0:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    return n_steps


def check_dtype(dtype):
    """``dtype`` as a ``jnp.dtype`` if it is float32 or float64."""
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype
