"""Esper telemetry files -> Narset windows.

Reads Esper's own telemetry as Nissa writes it (one JSON event per line in
``telemetry_<timestamp>/events.jsonl``, or one ``--telemetry-file``; gzipped or not): a
file, a ``telemetry_*`` directory, or a directory of them (read one after another, in name
order, which is their start time; each file starts a new batch). Two passes: the first
finds the envs, slots, inner epochs and event types (so the region count, the windowing
and which inputs the log carries are known before the first window); the second builds
the windows with [`narset_jax.ingest.esper_stream.EsperStream`][].

[`narset_jax.ingest.esper.EsperFeed`][] is the same for events fed one at a time (the
online API, e.g. a Nissa output backend in a live run).

The mapping from Esper fields to Narset inputs is in ``docs/telemetry.md``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator

from narset_jax.errors import UserError
from narset_jax.ingest.esper_coverage import Coverage, carried_inputs, loss_source, neutral_fills
from narset_jax.ingest.esper_schema import (
    EPOCH,
    R_CHURN,
    R_SEEDS,
    R_STAGE,
    STARTED,
    EsperEvent,
    is_esper_envelope,
    parse_esper,
)
from narset_jax.ingest.esper_stream import UNITS, WINDOWINGS, EsperStream, RegionLayout
from narset_jax.ingest.jsonl import GZIP_ERRORS, open_binary, read_error
from narset_jax.ingest.schema import (
    IngestError,
    IngestReport,
    Malformed,
    decode_line,
    fast_decode,
)
from narset_jax.ingest.stream import EventWindows

__all__ = ["EsperFeed", "EsperReport", "EsperScan", "EsperWindows", "esper_files",
           "looks_like_esper", "open_esper_windows", "scan_esper"]

# An env id of 10^6 or more is almost surely a typo (Esper runs a few to a few hundred).
MAX_ENVS = 1_000_000


@dataclasses.dataclass
class EsperReport(IngestReport):
    """The ingest report of an Esper log: the fields of
    [`narset_jax.ingest.IngestReport`][] plus ``files`` (the files read), ``windowing``,
    ``regions`` (the layout: ``unit``, ``n_envs``, ``slots``, ``n_regions``), ``epochs``
    (``first_epoch``, ``epochs_per_batch``), ``window_seconds``, ``group_id`` and
    ``coverage`` (see ``docs/telemetry.md``)."""

    files: list = dataclasses.field(default_factory=list)
    windowing: str = ""
    regions: dict = dataclasses.field(default_factory=dict)
    epochs: dict = dataclasses.field(default_factory=dict)
    window_seconds: float | None = None
    group_id: str | None = None
    coverage: dict = dataclasses.field(default_factory=dict)


def esper_files(path: str) -> list[str]:
    """The event files of ``path``: the file itself; a directory's ``events.jsonl``
    (``.gz``); else its ``*/events.jsonl`` (``.gz``), in name order."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such file or directory")
    for name in ("events.jsonl", "events.jsonl.gz"):
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    found = sorted(glob.glob(os.path.join(glob.escape(path), "*", "events.jsonl"))
                   + glob.glob(os.path.join(glob.escape(path), "*", "events.jsonl.gz")))
    if not found:
        raise UserError(f"{path}: no events.jsonl in it or in its telemetry_* directories")
    return found


def _fmt(path: str) -> str:
    with open(path, "rb") as fh:
        return "jsonl.gz" if fh.read(2) == b"\x1f\x8b" else "jsonl"


def _lines(files: list[str]) -> Iterator[tuple[int, str, int, bytes]]:
    """``(file index, file, line number, line)`` of every file in turn. A gzip stream cut
    short or corrupt raises an ``IngestError`` naming the file and line."""
    for i, path in enumerate(files):
        try:
            fh, raw = open_binary(path, _fmt(path))
        except OSError as err:
            raise UserError(f"{path}: cannot read: {err.strerror or err}") from None
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):  # noqa: B007
                yield i, path, lineno, line
        except (*GZIP_ERRORS, OSError) as err:
            raise read_error(path, lineno, err) from None
        finally:
            raw.close()


def _decode(line: bytes):
    try:
        return fast_decode(line)
    except (ValueError, TypeError, RecursionError):
        if not line.strip():
            return None
        return decode_line(line)


def looks_like_esper(path: str) -> bool:
    """``--format auto``: a directory, or a file whose first non-blank line decodes to an
    Esper event envelope (``event_type`` and ``timestamp``)."""
    if os.path.isdir(path):
        return True
    try:
        fh, raw = open_binary(path, _fmt(path))
    except OSError:
        return False
    try:
        for n, line in enumerate(fh):
            if n > 100:
                return False
            if not line.strip():
                continue
            try:
                return is_esper_envelope(_decode(line))
            except Malformed:
                return False
    except (*GZIP_ERRORS, OSError):
        return False
    finally:
        raw.close()
    return False


@dataclasses.dataclass
class EsperScan:
    """What the first pass found: ``n_envs``, ``slots``, the inner epochs
    (``first_epoch``, ``last_epoch``, ``max_epochs`` from ``TRAINING_STARTED``), reading
    codes and event types (counts), the first ``group_id``, the largest env id and where."""

    n_envs: int = 0
    slots: set = dataclasses.field(default_factory=set)
    first_epoch: int | None = None
    last_epoch: int | None = None
    max_epochs: int | None = None
    codes: dict = dataclasses.field(default_factory=dict)
    types: dict = dataclasses.field(default_factory=dict)
    top_env: int = -1
    top_env_at: str = ""
    first_bad: IngestError | None = None

    def add(self, ev: EsperEvent, where: str) -> None:
        if ev.info:
            self.n_envs = max(self.n_envs, ev.info.get("n_envs", 0))
            self.slots.update(ev.info.get("slot_ids", ()))
            if "max_epochs" in ev.info:
                self.max_epochs = max(self.max_epochs or 0, ev.info["max_epochs"])
        if ev.status != "used":
            return
        self.types[ev.etype] = self.types.get(ev.etype, 0) + 1
        if ev.etype == EPOCH:
            e = ev.inner_epoch
            self.first_epoch = e if self.first_epoch is None else min(self.first_epoch, e)
            self.last_epoch = e if self.last_epoch is None else max(self.last_epoch, e)
        for r in ev.readings:
            self.codes[r.code] = self.codes.get(r.code, 0) + 1
            if r.env is not None and r.env > self.top_env:
                self.top_env, self.top_env_at = r.env, where
            if r.slot is not None and r.code in (R_STAGE, R_CHURN):
                self.slots.add(r.slot)
            elif r.code == R_SEEDS:
                self.slots.update(r.value)

    def windowing(self) -> str:
        if self.types.get(EPOCH):
            return "epoch"
        if self.types.get("PPO_UPDATE_COMPLETED") or self.types.get("BATCH_EPOCH_COMPLETED"):
            return "batch"
        return "time"


def scan_esper(files: list[str]) -> EsperScan:
    """The first pass (malformed lines are skipped here; the second pass reports them)."""
    scan = EsperScan()
    try:
        for _i, path, lineno, line in _lines(files):
            try:
                obj = _decode(line)
                if obj is None:
                    continue
                scan.add(parse_esper(obj), f"{path}:{lineno}")
            except Malformed as m:
                if scan.first_bad is None:
                    scan.first_bad = IngestError(path, lineno, m.reason, m.detail)
                continue
    except IngestError:
        pass  # a gzip fault: the second pass reports it, after the windows before it
    return scan


def open_esper_windows(source: str, *, n_regions: int | None, lag: int, on_error: str,
                       max_gap: int, first_window: int | None, progress, dtype,
                       region: str = "env", window_seconds: float | None = None,
                       params=None, bar=None):
    """An [`narset_jax.ingest.EventWindows`][] over an Esper log (``source``: a file, a
    ``telemetry_*`` directory or a directory of them). ``n_regions`` (``--regions``) is
    the number of *envs*; ``region`` is ``"env"`` or ``"env,slot"``; ``window_seconds``
    the span of a window when the log has neither inner epochs nor batch boundaries;
    ``params`` gives the neutral values of never-measured inputs. ``progress`` is a
    callable ``(total_bytes) -> bar`` or ``None``. Other arguments as in
    [`narset_jax.ingest.open_windows`][]."""
    if source == "-":
        raise UserError("Esper telemetry cannot be read from stdin (it takes two passes); "
                        "give the file or its telemetry_* directory")
    if region not in UNITS:
        raise UserError(f"--region must be one of {', '.join(UNITS)}, got {region!r}")
    files = esper_files(source)
    scan = scan_esper(files)
    if not scan.types and scan.first_bad is not None:
        raise scan.first_bad  # no readable Esper event at all: name the first bad line
    windowing = scan.windowing()
    if windowing == "time" and not window_seconds:
        raise UserError(f"{source}: the log has no EPOCH_COMPLETED and no batch boundaries "
                        "(PPO_UPDATE_COMPLETED, BATCH_EPOCH_COMPLETED); give --window-seconds "
                        "to cut it into fixed time spans")
    if window_seconds is not None and window_seconds <= 0:
        raise UserError(f"--window-seconds must be > 0, got {window_seconds}")
    n_envs = max(scan.n_envs, scan.top_env + 1)
    if n_regions is not None:
        n_envs = n_regions
    elif n_envs < 1:
        raise UserError(f"{source}: no event names an env (data.env_id); nothing to decide")
    elif n_envs > MAX_ENVS:
        raise UserError(f"{scan.top_env_at}: env id {scan.top_env} implies {n_envs} envs; "
                        "pass the number of envs explicitly (--regions)")
    try:
        layout = RegionLayout(n_envs, scan.slots, region)
    except ValueError as err:
        raise UserError(f"{source}: {err}") from None
    span, first = None, 1
    if windowing == "epoch":
        first = scan.first_epoch
        last = max(scan.last_epoch, (scan.max_epochs or 0) + first - 1)
        span = last - first + 1
    carried = carried_inputs(scan.codes, scan.types)
    report = EsperReport(source=source, format="esper", n_regions=layout.n, lag=lag,
                         files=files, windowing=windowing, regions=layout.to_dict(),
                         epochs={"first_epoch": first, "epochs_per_batch": span}
                         if windowing == "epoch" else {},
                         window_seconds=window_seconds if windowing == "time" else None)
    coverage = Coverage()
    fills = neutral_fills(params)
    stream = EsperStream(layout, windowing=windowing, span=span, first_epoch=first,
                         window_seconds=window_seconds, lag=lag, max_gap=max_gap,
                         first_window=first_window, report=report, source=source, dtype=dtype,
                         carried=carried, loss_from=loss_source(scan.codes), fills=fills,
                         coverage=coverage)
    bar = progress(sum(os.path.getsize(f) for f in files)) if progress else None
    gen = _windows(files, stream, on_error, bar)
    return EsperWindows(_closing(gen, bar), layout.n, report, stream)


class EsperWindows(EventWindows):
    """The [`narset_jax.ingest.EventWindows`][] of an Esper log; ``esper`` is its
    [`narset_jax.ingest.esper_stream.EsperStream`][] (region layout, each closed window's
    batch, inner epoch and time)."""

    @property
    def esper(self) -> EsperStream:
        return self._stream


def _closing(gen, bar):
    try:
        yield from gen
    finally:
        if bar is not None:
            bar.close()


def _windows(files, stream: EsperStream, on_error: str, bar) -> Iterator[tuple[int, dict]]:
    report = stream.report
    skip = on_error == "skip"
    current = 0
    lines = 0
    try:
        for i, path, lineno, line in _lines(files):
            lines += 1
            if bar is not None:
                bar.update(len(line))
            if i != current:
                current = i
                stream.new_run()
            where = f"{path}:{lineno}"
            try:
                obj = _decode(line)
                if obj is None:
                    continue
                ev = parse_esper(obj)
                report.lines = lines
                yield from stream.feed(ev, where)
            except Malformed as m:
                if not skip:
                    raise IngestError(path, lineno, m.reason, m.detail) from None
                report.bad_lines += 1
                report.bad_by_reason[m.reason] += 1
                report.note(f"{where}: {m.reason.replace('_', ' ')}: {m.detail}")
        report.lines = lines
        yield from stream.finish()
    finally:
        report.lines = lines
        finish_report(stream)


def finish_report(stream: EsperStream) -> None:
    """Write the coverage and the group id into the stream's report."""
    rep = stream.report
    rep.group_id = stream.group
    rep.coverage = stream.coverage.report(stream.carried(), stream.fills, stream.loss_from,
                                          rep.region_windows_valid + rep.region_windows_missing)


class EsperFeed:
    """Esper events fed one at a time (dicts as ``FileOutput`` writes them, or JSON
    lines) -> closed windows: the online counterpart of the file reader, with the same
    windows for the same events.

    **Arguments:** ``n_envs``; ``slots`` (slot ids, needed for ``region="env,slot"``);
    ``region``; ``windowing`` (``"epoch"``, ``"batch"`` or ``"time"``);
    ``epochs_per_batch`` and ``first_epoch`` (epoch windows; a ``TRAINING_STARTED`` event
    fed before the first ``EPOCH_COMPLETED`` supplies ``max_epochs``); ``window_seconds``;
    ``lag``; ``loss_from`` (``"val_loss"`` or ``"accuracy"``); ``carried`` (input -> the
    log carries it; ``None``: an input counts as carried from the first event that
    carries it, and is filled with its neutral value before); ``params`` (for the neutral
    values); ``dtype``; ``strict`` (raise on a malformed event, else count it).
    """

    def __init__(self, n_envs: int, *, slots=(), region: str = "env",
                 windowing: str = "epoch", epochs_per_batch: int | None = None,
                 first_epoch: int = 1, window_seconds: float | None = None, lag: int = 2,
                 loss_from: str = "val_loss", carried: dict | None = None, params=None,
                 dtype="float32", strict: bool = True):
        if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive int, got {n_envs!r}")
        if windowing not in WINDOWINGS:
            raise ValueError(f"windowing must be one of {', '.join(WINDOWINGS)}")
        self.layout = RegionLayout(n_envs, slots, region)
        self.report = EsperReport(source="events", format="esper", n_regions=self.layout.n,
                                  lag=lag, windowing=windowing, regions=self.layout.to_dict())
        self.stream = EsperStream(self.layout, windowing=windowing, span=epochs_per_batch,
                                  first_epoch=first_epoch, window_seconds=window_seconds,
                                  lag=lag, report=self.report, source="events", dtype=dtype,
                                  carried=carried, loss_from=loss_from,
                                  fills=neutral_fills(params), coverage=Coverage())
        self.strict = strict
        self.index = 0

    @property
    def n_regions(self) -> int:
        return self.layout.n

    def feed(self, event) -> list[tuple[int, dict]]:
        """Fold one event in. **Returns:** the windows it closed, ``[(window, columns)]``
        (usually none). **Raises:** ``IngestError`` naming the event's index (``strict``)."""
        i = self.index
        self.index += 1
        self.report.lines += 1
        try:
            obj = decode_line(event) if isinstance(event, str | bytes | bytearray) else event
            ev = parse_esper(obj)
            if ev.etype == STARTED and ev.info and self.stream.span is None:
                me = ev.info.get("max_epochs")
                if me:
                    self.stream.span = me
            out = list(self.stream.feed(ev, f"event {i}"))
        except Malformed as m:
            if self.strict:
                raise IngestError("event", i, m.reason, m.detail, unit="index") from None
            self.report.bad_lines += 1
            self.report.bad_by_reason[m.reason] += 1
            self.report.note(f"event {i}: {m.reason.replace('_', ' ')}: {m.detail}")
            return []
        if out:
            finish_report(self.stream)
        return out

    def finish(self) -> list[tuple[int, dict]]:
        """Close every open window (the end of the run)."""
        out = list(self.stream.finish())
        finish_report(self.stream)
        return out
