"""narset-jax: a JAX-vectorised simulator and optimiser for Narset, a slow-timescale
budget allocator between a growth agent (Tamiyo) and a consolidation agent (Emrakul)."""

from narset_jax.budget import (
    COSTS,
    Allocation,
    ConvexCost,
    CostModel,
    GlobalAllocation,
    QuadraticOverdriveCost,
    SeedCost,
    cost_model,
    overdrive_cost,
    project_budget,
    project_fixed_sum,
    project_global_pool,
)
from narset_jax.params import NarsetParams, stack_params
from narset_jax.step import Decision, Narset, NarsetState, init_state, narset_rollout, narset_step
from narset_jax.telemetry import Telemetry

__version__ = "0.1.0"

__all__ = [
    "COSTS",
    "Allocation",
    "Decision",
    "Narset",
    "NarsetParams",
    "NarsetState",
    "Telemetry",
    "init_state",
    "narset_rollout",
    "narset_step",
    "stack_params",
    "GlobalAllocation",
    "overdrive_cost",
    "project_budget",
    "project_fixed_sum",
    "project_global_pool",
    "CostModel",
    "SeedCost",
    "ConvexCost",
    "QuadraticOverdriveCost",
    "cost_model",
]
