"""``narset audit``: rank the regions of a decision log by how likely they are to be gaming
the budget, with the evidence for each, and score the ranking against the ground truth a
simulated run records.

```python
from narset_jax.audit import audit_log

report = audit_log("out/spoofing")          # a narset simulate or narset decide log
report.regions[0]                           # the most suspicious region and its evidence
report.truth                                # precision, recall, false-positive rate (or None)
```

The score (``score``: pure NumPy, no I/O) is the robust z, across the mesh, of each
region's log rate of *transient* reported instability: instability, in the controller's
own units, that the windows around it do not corroborate. Regions above
``Phi^-1(1 - fpr)`` are flagged. The method, its calibration and what it measures are in
``docs/gaslighting.md`` (section Audit). ``report`` reads the log.
"""

from narset_jax.audit.report import (
    DEFAULT_FPR,
    AuditReport,
    audit_arrays,
    audit_log,
    describe,
    lines,
)

__all__ = ["DEFAULT_FPR", "AuditReport", "audit_arrays", "audit_log", "describe", "lines"]
