"""Ecologies: what a controller acts on in a closed loop (see [`sims.Ecology`][]).

Adding an ecology: a module here with a subclass of [`sims.Ecology`][], registered in
``REGISTRY`` below. Rollouts, sharded rollouts, tuning, phase diagrams, sweeps and
``narset simulate`` take it as an argument and need no change.
"""

from __future__ import annotations

from sims.ecologies.base import Ecology, Outcome
from sims.ecologies.neural import Neural
from sims.ecologies.stylised import STYLISED, Stylised

__all__ = ["ECOLOGIES", "REGISTRY", "STYLISED", "Ecology", "Outcome", "Stylised", "get_ecology"]

REGISTRY: dict[str, type[Ecology]] = {c.name: c for c in (Stylised, Neural)}
ECOLOGIES = tuple(REGISTRY)


def get_ecology(ecology: str | Ecology | None) -> Ecology:
    """The ecology named ``ecology`` (one of ``ECOLOGIES``; ``None`` means the stylised
    one), or ``ecology`` itself if it already is an [`sims.Ecology`][]."""
    if ecology is None:
        return STYLISED
    if isinstance(ecology, Ecology):
        return ecology
    if isinstance(ecology, str) and ecology in REGISTRY:
        return REGISTRY[ecology]()
    raise ValueError(f"unknown ecology {ecology!r}; valid: {', '.join(ECOLOGIES)}")
