"""Narset's decisions written back as Esper telemetry (``narset decide --emit esper FILE``).

Each decision row (one region, one window) becomes one event line in Nissa's envelope, so
that a run's ``events.jsonl`` and Narset's decisions load side by side in one DuckDB query
(``docs/telemetry.md`` shows it):

- ``event_type``: ``"NARSET_ALLOCATION"``;
- ``timestamp``: the time of the last event of the window the decision was made from
  (ISO-8601, UTC), so it sorts just after the telemetry it answers;
- ``epoch``: the inner epoch (epoch windows) or the batch (batch windows), else null;
- ``slot_id``: the region's slot (``--region env,slot``), else null;
- ``group_id``: the log's first ``group_id`` (``"default"`` when it has none);
- ``data``: ``env_id``, ``slot_id``, ``window``, ``batch``, ``inner_epoch``, then every
  column of the decision record (``Decision.columns()``: ``x_T``, ``x_E``, ``mode``,
  ``tier_E``, ..., and the raw inputs);
- ``event_id``: a UUID derived from the group, window and region (the same log gives the
  same file).

The file is written atomically ([`narset_jax.atomic`][]): it appears complete under its
name or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid

import numpy as np

from narset_jax.atomic import atomic_path, write_error
from narset_jax.ingest.esper_schema import format_timestamp
from narset_jax.step import DECISION_COLUMNS

__all__ = ["EVENT_TYPE", "EsperEmitter"]

EVENT_TYPE = "NARSET_ALLOCATION"
_NAMESPACE = uuid.UUID("6f1d2a2e-5b7c-4e0b-9d8a-3c4e5f6a7b8c")


class EsperEmitter:
    """Writes decisions as Esper events to ``path`` (atomically, on a clean exit).

    **Arguments:** ``path``; ``stream``, the [`narset_jax.ingest.esper_stream.EsperStream`][]
    the decisions were made from (its region layout and each window's batch, inner epoch
    and time).
    """

    def __init__(self, path: str | os.PathLike, stream):
        self.path = os.fspath(path)
        self.stream = stream
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._fh = None

    def __enter__(self) -> EsperEmitter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        try:
            self._fh = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        except OSError as err:
            self._stack.close()
            raise write_error(self.path, err) from err
        return self

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)

    def write(self, windows: list[int], columns: dict[str, np.ndarray]) -> None:
        """Write the decisions of ``windows`` (``columns``: name -> ``[T, N]`` array, the
        rows of the windows in order)."""
        layout, meta = self.stream.layout, self.stream.meta
        group = self.stream.group or "default"
        names = [k for k in DECISION_COLUMNS if k in columns]
        names += [k for k in columns if k not in names]
        values = [np.asarray(columns[k]).tolist() for k in names]
        lines = []
        for t, w in enumerate(windows):
            batch, inner, end = meta.get(w, (None, None, None))
            stamp = format_timestamp(end) if end is not None else None
            epoch = inner if inner is not None else (batch if self.stream.windowing == "batch"
                                                     else None)
            for r in range(layout.n):
                env, slot = layout.label(r)
                data = {"env_id": env, "slot_id": slot, "window": w,
                        "batch": batch if batch is not None and batch >= 0 else None,
                        "inner_epoch": inner}
                for k, col in zip(names, values):
                    data[k] = col[t][r]
                lines.append(json.dumps({
                    "event_id": str(uuid.uuid5(_NAMESPACE, f"{group}/{w}/{r}")),
                    "event_type": EVENT_TYPE,
                    "timestamp": stamp,
                    "seed_id": None,
                    "slot_id": slot,
                    "epoch": epoch,
                    "group_id": group,
                    "message": "Narset allocation",
                    "data": data,
                    "severity": "info",
                }))
        try:
            self._fh.write("".join(line + "\n" for line in lines))
        except OSError as err:
            raise write_error(self.path, err) from err
        self.rows += len(lines)
