"""Everything that closes the loop around the Narset controller library: ecologies (the
[`sims.Ecology`][] interface; the stylised one with its scenarios), controllers (Narset and
the baselines behind [`sims.Controller`][]), rollouts and sharded rollouts, metrics, and
what runs them (tuning, phase diagrams, sweeps, the simulate engine). See
``docs/simulator.md`` and ``docs/architecture.md``.

```python
import jax, sims
from narset_jax.params import NarsetParams

scenario = sims.load_scenario("crisis")
result = sims.rollout(NarsetParams(), scenario, jax.random.key(0), 1000, 150)
result.metrics.progress, sims.objective(result.metrics)
```
"""

from sims.baselines import controller_params, controller_step
from sims.controllers import (
    CONTROLLERS,
    AlwaysOverdrive,
    Controller,
    FixedTargets,
    NarsetController,
    NoInertia,
    SingleThreshold,
    StaticSplit,
    get_controller,
)
from sims.ecologies import ECOLOGIES, STYLISED, Ecology, Outcome, Stylised, get_ecology
from sims.ecologies.stylised import (
    Action,
    Events,
    SimState,
    init,
    observe,
    sim_step,
    sim_transition,
)
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
    "ECOLOGIES",
    "STYLISED",
    "AlwaysOverdrive",
    "Controller",
    "Ecology",
    "FixedTargets",
    "NarsetController",
    "NoInertia",
    "Outcome",
    "SingleThreshold",
    "StaticSplit",
    "Stylised",
    "get_controller",
    "get_ecology",
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
