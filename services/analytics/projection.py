"""Applies batches of stored events to the DuckDB projection (sans-I/O apart from the store).

The same code path serves the live aggregator, ``atomic-guide replay`` and the benchmarks, so a
replayed projection is built exactly like the live one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from services.analytics.rows import Invalid, Row, to_row, touches
from services.analytics.store import Store
from shared.eventlog import note_skipped

__all__ = ["Applied", "Projector"]


@dataclass(slots=True)
class Applied:
    stored: int = 0  # valid events appended
    invalid: int = 0  # refused events recorded in invalid_events
    skipped: int = 0  # at or below the stored sequence: seen before a crash or redelivered
    last_seq: int = 0
    touched: dict[str, set[str]] = field(default_factory=dict)  # context -> metrics to recompute


class Projector:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.last_seq = store.last_seq()
        self.failed = False  # a batch failed to commit: nothing after it may be applied

    def apply(self, batch: Iterable[tuple[int, str, bytes]]) -> Applied:
        """Append ``(stream seq, subject, data)`` messages, in stream order, in one transaction.

        After a failed batch every later call raises: applying the next batch would move the
        checkpoint past events that were never stored.
        """
        if self.failed:
            raise RuntimeError("an earlier batch failed; restart from the stored checkpoint")
        out = Applied(last_seq=self.last_seq)
        rows: list[Row] = []
        invalid: list[Invalid] = []
        top = self.last_seq
        for seq, subject, data in batch:
            if seq <= top:
                out.skipped += 1
                continue
            top = seq
            item = to_row(seq, subject, data)
            if isinstance(item, Invalid):
                invalid.append(item)  # kept in invalid_events, where `query` finds it
                note_skipped("analytics", seq, subject, item.reason[:200])
                continue
            rows.append(item)
            metrics = touches(item.type)
            if metrics:
                out.touched.setdefault(item.context_id, set()).update(metrics)
        if top == self.last_seq:
            return out
        try:
            self.store.append(rows, invalid, top)
        except BaseException:
            self.failed = True
            raise
        self.last_seq = out.last_seq = top
        out.stored, out.invalid = len(rows), len(invalid)
        return out
