"""Parquet tables of telemetry (one row per region and window): schema checks, the region
count from row-group statistics, and the vectorised reader behind
[`narset_jax.ingest.open_windows`][].
"""

from __future__ import annotations

import numpy as np

from narset_jax.errors import UserError
from narset_jax.ingest.accumulate import missing_window
from narset_jax.ingest.schema import IngestError, Malformed
from narset_jax.ingest.stream import WindowStream
from narset_jax.telemetry import BOOL_FIELDS, FLOAT_FIELDS, TELEMETRY_FIELDS

_PARQUET_INT_COLUMNS = ("region", "window")


def parquet_n_regions(pf) -> int:
    """Largest region id plus one, from the row-group statistics (or a scan without them)."""
    import pyarrow.compute as pc

    idx = pf.schema_arrow.get_field_index("region")
    best = -1
    stats_ok = True
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(idx).statistics
        if st is None or not st.has_min_max:
            stats_ok = False
            break
        best = max(best, int(st.max))
    if not stats_ok:
        best = -1
        for batch in pf.iter_batches(columns=["region"], batch_size=1 << 20):
            m = pc.max(batch.column(0)).as_py()
            if m is not None:
                best = max(best, int(m))
    return best + 1


def check_parquet_columns(pf, source: str) -> None:
    """Raise ``UserError`` if a needed column is missing or of the wrong type."""
    import pyarrow as pa

    schema = pf.schema_arrow
    for name in _PARQUET_INT_COLUMNS + TELEMETRY_FIELDS:
        if schema.get_field_index(name) < 0:
            raise UserError(f"{source}: Parquet table has no column '{name}'")
        t = schema.field(name).type
        if name in _PARQUET_INT_COLUMNS:
            ok = pa.types.is_integer(t)
        else:
            ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        if not ok:
            want = "an integer" if name in _PARQUET_INT_COLUMNS else "a number or boolean"
            raise UserError(f"{source}: Parquet column '{name}' must be {want}, got {t}")


_PARQUET_RANGES = {
    # column -> predicate of out-of-range finite values
    "rollbacks": lambda x: x < 0,
    "anomalies": lambda x: x < 0,
    "nonfinite": lambda x: x < 0,
    "churn": lambda x: x < 0,
    "alpha_shock": lambda x: x < 0,
    "active_seeds": lambda x: x < 0,
    "fossilised_seeds": lambda x: x < 0,
    "lstm_health": lambda x: x < 0,
    "growth_ratio": lambda x: x < 1,
}


def parquet_windows(pf, stream: WindowStream, on_error: str, batch_rows: int, progress):
    """The windows of a Parquet table, read in record batches of ``batch_rows``."""
    report, source = stream.report, stream.source
    skip = on_error == "skip"
    columns = list(_PARQUET_INT_COLUMNS + TELEMETRY_FIELDS)
    row0 = 0
    for batch in _batches(pf, columns, batch_rows, source):
        nrows = batch.num_rows
        report.lines += nrows
        cols, null, null_col = _batch_columns(batch, columns)
        region = cols["region"].astype(np.int64)
        window = cols["window"].astype(np.int64)
        for name in BOOL_FIELDS:
            x = cols[name]
            if x.dtype != bool:
                x = x.astype(np.float64)
                rows = np.flatnonzero(~np.isfinite(x) & ~null)
                if rows.size:
                    report.count_out_of_range(
                        name,
                        f"{source}: row {row0 + rows[0] + 1}",
                        f"{name} is not finite ({rows.size} rows in this batch)",
                        int(rows.size),
                    )
                cols[name] = np.nan_to_num(x, nan=0.0) > 0.5
        for name in FLOAT_FIELDS:
            cols[name] = cols[name].astype(np.float64)
        keep = ~(null | (window < 0))
        for i in np.flatnonzero(~keep):
            if null[i]:
                m = Malformed("missing_field", f"'{columns[null_col[i]]}' is null")
            else:
                m = Malformed("wrong_type", f"'window' must be non-negative, got {window[i]}")
            _parquet_bad(report, source, row0 + i + 1, m, skip)
        unknown = keep & ((region < 0) | (region >= stream.n))
        if unknown.any():
            rows = np.flatnonzero(unknown)
            for rid in np.unique(region[rows])[:10]:
                report.count_unknown_region(int(rid), 0)
            report.unknown_region += int(rows.size)
            report.note(
                f"{source}: row {row0 + rows[0] + 1}: unknown region {int(region[rows[0]])} "
                f"({rows.size} rows with unknown regions in this batch)"
            )
        idx = np.flatnonzero(keep & ~unknown)
        if idx.size and _rows_in_order(stream, region[idx], window[idx]):
            # The usual case, vectorised: windows strictly increase per region, none late.
            r, w = region[idx], window[idx]
            _scatter_rows(stream, cols, idx, r, w)
            np.maximum.at(stream.last_window, r, w)
            _range_counts(report, source, cols, idx, row0)
            report.events += int(idx.size)
            yield from stream.advance(int(w.max()))
        else:
            # Row by row, so that each problem is named at its row.
            for i in idx:
                ri, wi = int(region[i]), int(window[i])
                try:
                    if wi == stream.last_window[ri]:
                        raise Malformed(
                            "window_backwards",
                            f"region {ri} window {wi} repeats (one row per region and window)",
                        )
                    stream.check(ri, wi)
                except Malformed as m:
                    _parquet_bad(report, source, row0 + i + 1, m, skip)
                    continue
                if stream.too_far(wi):
                    report.count_out_of_range(
                        "window",
                        f"{source}: row {row0 + i + 1}",
                        f"window {wi} is more than {stream.max_gap} windows past the newest",
                    )
                    continue
                stream.last_window[ri] = wi
                one = np.array([i])
                _scatter_rows(stream, cols, one, region[one], window[one])
                _range_counts(report, source, cols, one, row0)
                report.events += 1
                yield from stream.advance(wi)
        if progress is not None:
            progress(nrows)
        row0 += nrows
    yield from stream.finish()


def _batches(pf, columns, batch_rows: int, source: str):
    """``pf``'s record batches; a corrupt or unreadable page raises a one-line
    ``UserError`` naming the file."""
    import pyarrow as pa

    batches = pf.iter_batches(columns=columns, batch_size=batch_rows)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"{source}: unreadable Parquet: {detail}") from None
        yield batch


def _batch_columns(batch, columns):
    """numpy columns of a record batch, nulls filled with 0, plus the null mask and the
    index of the first null column of each row."""
    nrows = batch.num_rows
    cols = {}
    null = np.zeros(nrows, bool)
    null_col = np.full(nrows, -1)
    for i, name in enumerate(columns):
        arr = batch.column(i)
        if arr.null_count:
            isn = np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
            null_col = np.where(isn & (null_col < 0), i, null_col)
            null |= isn
            import pyarrow as pa

            arr = arr.fill_null(False if pa.types.is_boolean(arr.type) else 0)
        cols[name] = arr.to_numpy(zero_copy_only=False)
    return cols, null, null_col


def _rows_in_order(stream: WindowStream, r, w) -> bool:
    """Vectorised: per region, windows strictly increase (after its last window); none is
    late or too far ahead."""
    order = np.lexsort((np.arange(r.size), r))
    rs, ws = r[order], w[order]
    same = np.r_[False, rs[1:] == rs[:-1]]
    prev = np.where(same, np.r_[-1, ws[:-1]], stream.last_window[rs])
    if not np.all(ws > prev):
        return False
    if stream.next_emit is not None and int(w.min()) < stream.next_emit:
        return False
    base = stream.newest if stream.newest >= 0 else (stream.next_emit or int(w.min()))
    return int(w.max()) <= base + stream.max_gap


def _parquet_bad(report, source, row, m: Malformed, skip: bool) -> None:
    if not skip:
        raise IngestError(source, row, m.reason, m.detail, unit="row")
    report.bad_lines += 1
    report.bad_by_reason[m.reason] += 1
    report.note(f"{source}: row {row}: {m.reason.replace('_', ' ')}: {m.detail}")


def _scatter_rows(stream: WindowStream, cols, idx, r, w) -> None:
    for wi in np.unique(w):
        sel = w == wi
        acc = stream.open.get(int(wi))
        if acc is None:
            acc = stream.open[int(wi)] = missing_window(stream.n)
        rows, regions = idx[sel], r[sel]
        for k in TELEMETRY_FIELDS:
            acc[k][regions] = cols[k][rows]


def _range_counts(report, source, cols, idx, row0) -> None:
    for name, pred in _PARQUET_RANGES.items():
        x = cols[name][idx]
        with np.errstate(invalid="ignore"):
            bad = pred(x)
        if bad.any():
            first = int(idx[np.flatnonzero(bad)[0]])
            report.count_out_of_range(
                name,
                f"{source}:row {row0 + first + 1}",
                f"{name} = {x[bad][0]!r} ({int(bad.sum())} rows in this batch)",
                int(bad.sum()),
            )
    for name in FLOAT_FIELDS:
        report.nonfinite_values += int((~np.isfinite(cols[name][idx])).sum())
