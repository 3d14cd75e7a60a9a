"""Helpers shared by the test suite, the benchmarks and the docs' examples. The library
itself never imports this package, and nothing here imports ``sims``.

- [`narset_jax.testing.synthetic_event_log`][]: a synthetic event log in the JSONL schema
  of ``docs/telemetry.md``.
- ``narset_jax.testing.reference_budget``: slow, 60-digit reference solvers for the budget
  projections (import the submodule; it is not loaded with the package).
"""

from narset_jax.testing._event_log import synthetic_event_log

__all__ = ["synthetic_event_log"]
