"""Online use: Narset beside a training loop, one window at a time.

Two ways to drive the controller:

- functional, with explicit state (``narset_jax.Narset``)::

      ctl = nj.Narset(params)
      state = ctl.init(n_regions)
      state, decision = ctl.step(state, telemetry)     # jitted; traces once

- stateful, with [`narset_jax.online.OnlineNarset`][], which also turns each window's
  events (the JSONL schema of ``docs/telemetry.md``, as dicts) into telemetry::

      online = OnlineNarset(params, n_regions)
      decision = online.step_events(events_of_this_window)

[`narset_jax.online.telemetry_from_events`][] is the events -> telemetry helper on its own.

Esper's own telemetry, one event at a time (the dicts Nissa's ``FileOutput`` writes, e.g.
from a Nissa output backend in a live run: [`narset_jax.online.NarsetNissaBackend`][])::

      online = OnlineNarset.for_esper(params, n_envs=4, epochs_per_batch=25)
      for event in events:
          for window, decision in online.feed_esper(event):   # windows it closed
              ...
      online.finish_esper()                                    # the last windows
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.ingest.accumulate import LevelCarry, WindowAccumulator
from narset_jax.ingest.schema import (
    IngestError,
    IngestReport,
    Malformed,
    decode_line,
    out_of_range,
    parse_fields,
)
from narset_jax.params import NarsetParams
from narset_jax.step import Decision, Narset, NarsetState
from narset_jax.telemetry import BOOL_FIELDS, TELEMETRY_FIELDS, Telemetry

__all__ = [
    "EventWindowBuilder",
    "NarsetNissaBackend",
    "OnlineNarset",
    "esper_event_dict",
    "telemetry_from_events",
]


class EventWindowBuilder:
    """Turns the events of one window at a time into [`narset_jax.Telemetry`][].

    Stateful only in what it must carry between windows: each region's last reported
    level values (loss, LSTM health, growth ratio, seed counts), which fill windows without
    a new reading, and the last window id, so windows cannot go backwards. The rules are
    those of the JSONL ingest (``docs/telemetry.md``).

    **Arguments:**

    - ``n_regions``: ``N``.
    - ``dtype``: numpy float dtype of the numeric fields (``valid``, ``boundary`` are bool).
    - ``strict``: ``True`` (default) raises ``ValueError`` for a malformed event, an unknown
      region or an out-of-range value, before anything of the window is used; ``False``
      skips such events and counts them in ``report``.
    """

    def __init__(self, n_regions: int, *, dtype=np.float32, strict: bool = True):
        if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions < 1:
            raise ValueError(f"n_regions must be a positive int, got {n_regions!r}")
        self.n_regions = n_regions
        self.dtype = np.dtype(dtype)
        self.strict = strict
        self.carry = LevelCarry(n_regions)
        self.last_window: int | None = None
        self.report = IngestReport(source="events", format="events", n_regions=n_regions)

    def build(self, events: Iterable) -> Telemetry:
        """Telemetry for one window from its events.

        **Arguments:**

        - ``events``: dicts (or JSON lines) of the event schema, all with the same
          ``window``, greater than the previous call's. An empty list gives a window in
          which every region is missing.

        **Returns:** a [`narset_jax.Telemetry`][] of ``[N]`` numpy arrays.

        **Raises:** [`narset_jax.ingest.IngestError`][] (a ``ValueError``) naming the
        event's index and the reason.
        """
        report = self.report
        n = self.n_regions
        acc = WindowAccumulator(n)
        window = None
        parsed = []
        for i, event in enumerate(events):
            report.lines += 1
            try:
                obj = decode_line(event) if isinstance(event, str | bytes | bytearray) else event
                region, w, kind, a, b = parse_fields(obj)
                if window is None:
                    window = w
                    if self.last_window is not None and w <= self.last_window:
                        raise Malformed(
                            "window_backwards",
                            f"window {w} after window {self.last_window} (one call per window)",
                        )
                elif w != window:
                    raise Malformed(
                        "wrong_type", f"window {w} differs from this call's window {window}"
                    )
                if not 0 <= region < n:
                    self._drop(i, "unknown_region", f"{region} (n_regions = {n})")
                    report.count_unknown_region(region)
                    report.note(f"event {i}: unknown region {region} (n_regions = {n})")
                    continue
                bad = out_of_range(kind, a, b)
                if bad is not None:
                    self._drop(i, "out_of_range", bad[1])
                    report.count_out_of_range(bad[0], f"event {i}", bad[1])
                    continue
            except Malformed as m:
                if self.strict:
                    raise IngestError("event", i, m.reason, m.detail, unit="index") from None
                report.bad_lines += 1
                report.bad_by_reason[m.reason] += 1
                report.note(f"event {i}: {m.reason.replace('_', ' ')}: {m.detail}")
                continue
            parsed.append((region, kind, a, b))
        for region, kind, a, b in parsed:
            report.nonfinite_values += acc.add(region, kind, a, b)
            report.events += 1
        if window is not None:
            self.last_window = window
        report.windows += 1
        cols = acc.finish(self.carry, report)
        return Telemetry(
            **{
                k: cols[k].astype(bool if k in BOOL_FIELDS else self.dtype)
                for k in TELEMETRY_FIELDS
            }
        )

    def _drop(self, index: int, reason: str, detail: str) -> None:
        if self.strict:
            raise IngestError("event", index, reason, detail, unit="index")


def telemetry_from_events(
    events: Iterable, n_regions: int, *, dtype=np.float32, strict: bool = True
) -> Telemetry:
    """Telemetry for one window from a list of its events (dicts or JSON lines).

    A one-shot [`narset_jax.online.EventWindowBuilder`][]: nothing is carried from earlier
    windows, so a region without a ``loss`` event in this list is missing
    (``valid = False``), and other level fields without a reading take neutral values.
    Use the builder, or [`narset_jax.online.OnlineNarset.step_events`][], to carry them
    from window to window.

    ```python
    tel = telemetry_from_events(
        [
            {"region": 0, "window": 7, "kind": "loss", "value": 0.42},
            {"region": 0, "window": 7, "kind": "lstm_health", "h_rms": 3.1},
            {"region": 1, "window": 7, "kind": "loss", "value": 0.57},
            {"region": 1, "window": 7, "kind": "boundary"},
        ],
        n_regions=2,
    )
    ```

    **Raises:** ``ValueError`` naming the event's index, for a malformed event, an unknown
    region or an out-of-range value (``strict=False`` skips them instead).
    """
    return EventWindowBuilder(n_regions, dtype=dtype, strict=strict).build(events)


class OnlineNarset:
    """Narset with its state held for you: call once per window from a training loop.

    ```python
    online = OnlineNarset(NarsetParams(), n_regions=64)
    for events in windows:                     # one list of event dicts per window
        decision = online.step_events(events)  # or online.step(telemetry)
        apply(decision.x_T, decision.x_E, decision.tier_E)
    ```

    The step is [`narset_jax.Narset.step`][]: jitted, and traced once, because inputs are
    cast to the state's dtype and shape before the call.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] (default: the defaults).
    - ``n_regions``: ``N``.
    - ``dtype``: the state's float dtype (``jnp.float32`` or ``jnp.float64``).
    - ``strict``: passed to the [`narset_jax.online.EventWindowBuilder`][] used by
      ``step_events``.
    """

    def __init__(
        self,
        params: NarsetParams | None = None,
        n_regions: int = 1,
        *,
        dtype=jnp.float32,
        strict: bool = True,
    ):
        self.controller = Narset(params)
        self.state: NarsetState = self.controller.init(n_regions, dtype)
        self.builder = EventWindowBuilder(n_regions, dtype=np.dtype(dtype), strict=strict)
        self.esper = None  # an EsperFeed, for OnlineNarset.for_esper

    @classmethod
    def for_esper(
        cls,
        params: NarsetParams | None = None,
        n_envs: int = 1,
        *,
        slots=(),
        region: str = "env",
        windowing: str = "epoch",
        epochs_per_batch: int | None = None,
        first_epoch: int = 1,
        window_seconds: float | None = None,
        lag: int = 2,
        loss_from: str = "val_loss",
        carried: dict | None = None,
        dtype=jnp.float32,
        strict: bool = True,
    ) -> OnlineNarset:
        """Narset fed Esper's own telemetry one event at a time
        ([`narset_jax.online.OnlineNarset.feed_esper`][]).

        The regions are Esper's envs (``region="env"``) or their slots
        (``region="env,slot"``, which needs ``slots``); windows, placement and the twelve
        inputs follow ``narset decide --format esper`` (``docs/telemetry.md``), through
        [`narset_jax.ingest.EsperFeed`][] (its arguments). ``carried`` says which inputs
        the run's telemetry carries (``narset decide`` finds it in a first pass over the
        file; online, the default ``None`` counts an input as carried from its first
        event and fills it with its neutral value before).
        """
        from narset_jax.ingest.esper import EsperFeed

        feed = EsperFeed(n_envs, slots=slots, region=region, windowing=windowing,
                         epochs_per_batch=epochs_per_batch, first_epoch=first_epoch,
                         window_seconds=window_seconds, lag=lag, loss_from=loss_from,
                         carried=carried, params=params, dtype=np.dtype(dtype), strict=strict)
        online = cls(params, feed.n_regions, dtype=dtype, strict=strict)
        online.esper = feed
        return online

    def feed_esper(self, event) -> list[tuple[int, Decision]]:
        """Fold in one Esper event (a dict with Nissa's keys, or its JSON line).

        **Returns:** ``[(window, decision)]`` for the windows the event closed (a window
        closes ``lag`` windows behind the newest), usually none.

        **Raises:** [`narset_jax.ingest.IngestError`][] naming the event's index for a
        malformed event (with ``strict``; else it is counted in ``esper_report``).
        """
        if self.esper is None:
            raise TypeError("feed_esper needs an OnlineNarset made by OnlineNarset.for_esper")
        return [(w, self._step_columns(cols)) for w, cols in self.esper.feed(event)]

    def finish_esper(self) -> list[tuple[int, Decision]]:
        """Close the windows still open (the end of the run) and decide them."""
        if self.esper is None:
            raise TypeError("finish_esper needs an OnlineNarset made by OnlineNarset.for_esper")
        return [(w, self._step_columns(cols)) for w, cols in self.esper.finish()]

    @property
    def esper_report(self):
        """The Esper feed's [`narset_jax.ingest.EsperReport`][] (coverage included)."""
        return None if self.esper is None else self.esper.report

    def _step_columns(self, cols: dict) -> Decision:
        dtype = np.dtype(self.state.dtype)
        return self.step(Telemetry(**{
            k: cols[k].astype(bool if k in BOOL_FIELDS else dtype) for k in TELEMETRY_FIELDS}))

    @property
    def params(self) -> NarsetParams:
        return self.controller.params

    @property
    def n_regions(self) -> int:
        return self.state.n_regions

    @property
    def report(self) -> IngestReport:
        """Counts of events seen, skipped, unknown regions and out-of-range values."""
        return self.builder.report

    def step(self, telemetry: Telemetry) -> Decision:
        """One decision window from telemetry; advances the held state.

        Fields may be ``[N]`` arrays or scalars (broadcast); numeric fields are cast to the
        state dtype and ``valid``/``boundary`` to bool (numbers read as ``x > 0.5``).

        **Returns:** the [`narset_jax.Decision`][] (``[N]`` fields).
        """
        self.state, decision = self.controller.step(self.state, self._cast(telemetry))
        return decision

    def step_events(self, events: Iterable) -> Decision:
        """One decision window from that window's events (see
        [`narset_jax.online.EventWindowBuilder.build`][])."""
        return self.step(self.builder.build(events))

    def reset(self) -> None:
        """Fresh state and builder (same params and size)."""
        n, dtype = self.n_regions, self.state.dtype
        self.state = self.controller.init(n, dtype)
        self.builder = EventWindowBuilder(n, dtype=np.dtype(dtype), strict=self.builder.strict)

    def _cast(self, telemetry: Telemetry) -> Telemetry:
        if not isinstance(telemetry, Telemetry):
            raise TypeError(f"step needs a Telemetry, got {type(telemetry).__name__}")
        n, dtype = self.n_regions, self.state.dtype
        out = {}
        for k in TELEMETRY_FIELDS:
            x = getattr(telemetry, k)
            if isinstance(x, jax.core.Tracer):
                raise TypeError("OnlineNarset.step is not traceable; use Narset.step in jit")
            x = np.asarray(x)
            if x.shape not in ((), (n,)):
                raise ValueError(f"Telemetry.{k} must have shape ({n},), got {x.shape}")
            if k in BOOL_FIELDS:
                x = x if x.dtype == bool else np.nan_to_num(x.astype(np.float64)) > 0.5
            else:
                x = x.astype(dtype)
            out[k] = jnp.asarray(np.broadcast_to(x, (n,)))
        return Telemetry(**out)


def esper_event_dict(event) -> dict:
    """An Esper ``TelemetryEvent`` (or anything with its attributes) as the dict Nissa's
    ``FileOutput`` writes: ``event_type`` by name, ``timestamp`` in ISO-8601, ``data``
    through its ``to_dict()`` (else ``dataclasses.asdict``). A dict passes through."""
    import dataclasses

    if isinstance(event, dict):
        return event
    etype = event.event_type
    data = event.data
    if data is not None and dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = data.to_dict() if callable(getattr(data, "to_dict", None)) else (
            dataclasses.asdict(data))
    ts = event.timestamp
    return {
        "event_id": getattr(event, "event_id", None),
        "event_type": getattr(etype, "name", etype),
        "timestamp": ts.isoformat() if hasattr(ts, "isoformat") else ts,
        "seed_id": getattr(event, "seed_id", None),
        "slot_id": getattr(event, "slot_id", None),
        "epoch": getattr(event, "epoch", None),
        "group_id": getattr(event, "group_id", None),
        "message": getattr(event, "message", ""),
        "data": data,
        "severity": getattr(event, "severity", "info"),
    }


class NarsetNissaBackend:
    """A Nissa output backend (``start``, ``emit``, ``close``) that runs Narset live:
    ``hub.add_backend(NarsetNissaBackend(online, on_decision))``.

    Each event goes through [`narset_jax.online.OnlineNarset.feed_esper`][];
    ``on_decision(window, decision)`` is called for every window decided (also for the
    last ones, on ``close``). ``online`` comes from
    [`narset_jax.online.OnlineNarset.for_esper`][], built with ``strict=False`` so that a
    malformed event is counted rather than raised in Nissa's worker thread.
    """

    def __init__(self, online: OnlineNarset, on_decision=None):
        if online.esper is None:
            raise TypeError("NarsetNissaBackend needs an OnlineNarset made by for_esper")
        self.online = online
        self.on_decision = on_decision
        self.decided = 0

    def start(self) -> None:
        """Nothing to start."""

    def emit(self, event) -> None:
        self._deliver(self.online.feed_esper(esper_event_dict(event)))

    def close(self) -> None:
        """Decide the windows still open."""
        self._deliver(self.online.finish_esper())

    def _deliver(self, decided) -> None:
        for w, decision in decided:
            self.decided += 1
            if self.on_decision is not None:
                self.on_decision(w, decision)
