"""Ecologies: what a controller acts on in a closed loop (see [`sims.Ecology`][]).

Adding an ecology: a module here with a subclass of [`sims.Ecology`][], registered in
``REGISTRY`` below. Rollouts, sharded rollouts, tuning, phase diagrams, sweeps and
``narset simulate`` take it as an argument and need no change; ``--ecology NAME
--scenario S`` on the command line resolves ``S`` with [`load_params`][] (the ecology's
``load_scenario``).
"""

from __future__ import annotations

from sims.ecologies.base import Ecology, Outcome
from sims.ecologies.neural import Neural
from sims.ecologies.stylised import STYLISED, Stylised

__all__ = [
    "ECOLOGIES", "REGISTRY", "STYLISED", "Ecology", "Outcome", "Stylised", "get_ecology",
    "load_params",
]

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


def load_params(ecology: str | Ecology | None, name_or_path):
    """The params of ``ecology`` (as for [`get_ecology`][]) named by ``name_or_path``: a
    shipped scenario of that ecology, a scenario TOML file, or params (returned
    unchanged). Unknown names are one-line ``ValueError``s listing the valid ones."""
    return get_ecology(ecology).load_scenario(name_or_path)
