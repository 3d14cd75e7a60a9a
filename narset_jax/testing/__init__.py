"""Helpers shared by the test suite, the benchmarks and the docs' examples. The library
itself never imports this package, and nothing here imports ``sims``.

- [`narset_jax.testing.synthetic_event_log`][]: a synthetic event log in the JSONL schema
  of ``docs/telemetry.md``.
- [`narset_jax.testing.esper_events`][], [`narset_jax.testing.write_esper_log`][]: synthetic
  Esper telemetry (Nissa's event lines, both schemas) for the Esper ingest.
- ``narset_jax.testing.reference_budget``: slow, 60-digit reference solvers for the budget
  projections (import the submodule; it is not loaded with the package).
"""

from narset_jax.testing._event_log import synthetic_event_log
from narset_jax.testing.esper import esper_events, esper_lines, write_esper_log

__all__ = ["esper_events", "esper_lines", "synthetic_event_log", "write_esper_log"]
