"""Simulated ecologies of regions for Narset: scenarios, dynamics, baselines, rollouts and
metrics. See ``docs/simulator.md``.

```python
import jax, sims
from narset_jax.params import NarsetParams

scenario = sims.load_scenario("crisis")
result = sims.rollout(NarsetParams(), scenario, jax.random.key(0), 1000, 150)
result.metrics.progress, sims.objective(result.metrics)
```
"""

from sims.baselines import CONTROLLERS, controller_params, controller_step
from sims.ecology import Action, Events, SimState, init, observe, sim_step, sim_transition
from sims.metrics import (
    DEFAULT_WEIGHTS,
    METRIC_NAMES,
    Metrics,
    ObjectiveWeights,
    objective,
)
from sims.rollout import (
    RolloutCarry,
    RolloutResult,
    rollout,
    rollout_chunk,
    rollout_init,
    rollout_metrics,
)
from sims.scenario import SCENARIOS, Scenario, ScenarioError, load_scenario

__all__ = [
    "CONTROLLERS",
    "DEFAULT_WEIGHTS",
    "METRIC_NAMES",
    "SCENARIOS",
    "Action",
    "Events",
    "Metrics",
    "ObjectiveWeights",
    "RolloutCarry",
    "RolloutResult",
    "Scenario",
    "ScenarioError",
    "SimState",
    "controller_params",
    "controller_step",
    "init",
    "load_scenario",
    "objective",
    "observe",
    "rollout",
    "rollout_chunk",
    "rollout_init",
    "rollout_metrics",
    "sim_step",
    "sim_transition",
]
