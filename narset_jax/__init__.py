"""narset-jax: a JAX-vectorised simulator and optimiser for Narset, a slow-timescale
budget allocator between a growth agent (Tamiyo) and a consolidation agent (Emrakul)."""

from narset_jax.budget import (
    COSTS,
    Allocation,
    GlobalAllocation,
    overdrive_cost,
    project_budget,
    project_fixed_sum,
    project_global_pool,
)

__version__ = "0.1.0"

__all__ = [
    "COSTS",
    "Allocation",
    "GlobalAllocation",
    "overdrive_cost",
    "project_budget",
    "project_fixed_sum",
    "project_global_pool",
]
