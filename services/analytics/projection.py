"""Applies batches of stored events to the DuckDB projection.

``prepare`` is pure (decode, validate, build the Arrow table) and runs in the caller's thread;
``commit`` only writes, in DuckDB's thread, so the two overlap from one batch to the next and
the write does not wait on the GIL. The same code path serves the live aggregator,
``atomic-guide replay`` and the benchmarks, so a replayed projection is built exactly like the
live one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from services.analytics.rows import Columns, Invalid, Row, columns, rows_to_columns, to_row, touches
from services.analytics.store import Store, arrow_table
from shared.bus.port import Entry
from shared.eventlog import note_skipped

__all__ = ["Applied", "Prepared", "Projector"]


@dataclass(slots=True)
class Applied:
    stored: int = 0  # valid events appended
    invalid: int = 0  # refused events recorded in invalid_events
    skipped: int = 0  # at or below the stored sequence: seen before a crash or redelivered
    last_seq: int = 0
    touched: dict[str, set[str]] = field(default_factory=dict)  # context -> metrics to recompute


@dataclass(slots=True)
class Prepared:
    """A batch ready to write: its rows, what it refused, and what committing it will mean."""

    rows: pa.Table | None
    invalid: list[Invalid]
    applied: Applied


class Projector:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.last_seq = store.last_seq()  # committed
        self._prepared = self.last_seq  # the last sequence handed to a Prepared
        self.failed = False  # a batch failed to commit: nothing after it may be applied

    def apply(self, batch: Sequence[Entry]) -> Applied:
        """``prepare`` then ``commit``: log entries, in stream order, in one transaction."""
        return self.commit(self.prepare(batch))

    def prepare(self, batch: Sequence[Entry]) -> Prepared:
        """Decode and validate a batch that follows the last one prepared. Entries at or below
        it were seen before (a redelivery, or before a crash) and are skipped."""
        if self.failed:
            raise RuntimeError("an earlier batch failed; restart from the stored checkpoint")
        out = Applied(last_seq=self._prepared)
        fresh: list[Entry] = []
        top = self._prepared
        for entry in batch:  # stream order: anything at or below what is stored was seen
            if entry.seq > top:
                fresh.append(entry)
                top = entry.seq
        out.skipped = len(batch) - len(fresh)
        if not fresh:
            return Prepared(None, [], out)
        found = columns(fresh)
        if found is None:  # something unknown or invalid in it: event by event
            cols, invalid = self._one_by_one(fresh)
        else:
            cols, invalid = found
        for bad in invalid:  # kept in invalid_events, where `query` finds it
            note_skipped("analytics", bad.seq, bad.subject, bad.reason[:200])
        for ctx, kind in set(zip(cols["context_id"], cols["type"], strict=True)):
            metrics = touches(kind)
            if metrics:
                out.touched.setdefault(ctx, set()).update(metrics)
        self._prepared = out.last_seq = top
        out.stored, out.invalid = len(cols["seq"]), len(invalid)
        return Prepared(arrow_table(cols) if cols["seq"] else None, invalid, out)

    def commit(self, prepared: Prepared) -> Applied:
        """Write a prepared batch and its checkpoint in one transaction (in prepare's order).

        After a failed batch every later call raises: applying the next batch would move the
        checkpoint past events that were never stored.
        """
        if self.failed:
            raise RuntimeError("an earlier batch failed; restart from the stored checkpoint")
        applied = prepared.applied
        if applied.last_seq <= self.last_seq:
            return applied  # nothing new in it
        try:
            self.store.append(prepared.rows, prepared.invalid, applied.last_seq)
        except BaseException:
            self.failed = True
            raise
        self.last_seq = applied.last_seq
        return applied

    @staticmethod
    def _one_by_one(batch: list[Entry]) -> tuple[Columns, list[Invalid]]:
        rows: list[Row] = []
        invalid: list[Invalid] = []
        for entry in batch:
            item = to_row(entry.seq, entry.subject, entry.data)
            if isinstance(item, Invalid):
                invalid.append(item)
            else:
                rows.append(item)
        return rows_to_columns(rows), invalid
