"""The neural ecology: every region is a small network in real training on MNIST-1D.

Modules, one topic each: ``data`` (MNIST-1D, its hash, a region's view), ``network`` (host
and seed blueprints), ``lifecycle`` (Esper's stage codes and transitions), ``agents``
(Tamiyo's and Emrakul's rules), ``governor`` (Esper's governor), ``state`` (the state and a
fresh one), ``ecology`` (the [`sims.Ecology`][] subclass: training, telemetry, outcome),
``scenario`` (the params and their TOML files). The design is in ``docs/neural.md``.
"""

from sims.ecologies.neural.ecology import NEURAL, Neural, NeuralEvents
from sims.ecologies.neural.scenario import (
    NEURAL_SCENARIO_DIR,
    NEURAL_SCENARIOS,
    NeuralScenario,
    load_neural_scenario,
)
from sims.ecologies.neural.state import NeuralState

__all__ = [
    "NEURAL",
    "NEURAL_SCENARIOS",
    "NEURAL_SCENARIO_DIR",
    "Neural",
    "NeuralEvents",
    "NeuralScenario",
    "NeuralState",
    "load_neural_scenario",
]
