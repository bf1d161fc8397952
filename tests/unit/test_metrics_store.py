"""The projection's write path: one transaction per batch, checkpoint inside it, no doubles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.analytics.projection import Projector
from services.analytics.store import Store
from shared.bus.port import Entry

NOW = 1_767_605_400_000


def batch(first: int, n: int, ctx: str = "c") -> list[Entry]:
    out = []
    for seq in range(first, first + n):
        ev = {
            "type": "chat.message",
            "contextId": ctx,
            "ts": NOW - seq,
            "messageId": f"m{seq}",
            "seq": seq,
            "userId": "u",
            "userName": "U",
            "content": "x",
        }
        out.append(Entry(seq, f"ag.evt.chat.{ctx}.message", json.dumps(ev).encode()))
    return out


class Crash(Exception):
    pass


def test_a_failure_before_commit_stores_nothing_and_moves_no_checkpoint(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    projector = Projector(store)
    projector.apply(batch(1, 10))

    def crash() -> None:
        raise Crash

    store.before_commit = crash
    with pytest.raises(Crash):
        projector.apply(batch(11, 10) + [Entry(21, "ag.evt.chat.c.message", b"garbage")])
    assert store.counts() == (10, 0)
    assert store.last_seq() == 10
    # The next batch must not be applied past the lost one (it would move the checkpoint).
    store.before_commit = None
    with pytest.raises(RuntimeError, match="earlier batch failed"):
        projector.apply(batch(22, 5))
    assert store.last_seq() == 10
    store.close()

    # The process "restarts": JetStream redelivers everything after the stored checkpoint.
    store = Store(tmp_path / "e.duckdb")
    projector = Projector(store)
    assert projector.last_seq == 10
    applied = projector.apply(batch(11, 10) + [Entry(21, "ag.evt.chat.c.message", b"garbage")])
    assert (applied.stored, applied.invalid, applied.skipped) == (10, 1, 0)
    assert store.counts() == (20, 1)
    assert store.last_seq() == 21


def test_a_batch_committed_but_not_acked_is_skipped_on_redelivery(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    Projector(store).apply(batch(1, 50))
    store.close()
    store = Store(tmp_path / "e.duckdb")
    projector = Projector(store)
    # Redelivery of the unacked tail, overlapping with new events.
    applied = projector.apply(batch(41, 20))
    assert (applied.stored, applied.skipped, applied.last_seq) == (10, 10, 60)
    assert store.counts() == (60, 0)
    dup = store.con.execute("SELECT count(*) - count(DISTINCT seq) FROM events").fetchone()
    assert dup == (0,)


def test_an_already_seen_batch_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    projector = Projector(store)
    projector.apply(batch(1, 5))
    applied = projector.apply(batch(1, 5))
    assert (applied.stored, applied.skipped, applied.touched) == (0, 5, {})
    assert store.counts() == (5, 0)


def test_applied_reports_which_metrics_each_context_needs(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    items = batch(1, 2, "a")
    quiz = {
        "type": "learning.assessment_submitted",
        "contextId": "b",
        "ts": NOW,
        "userId": "u",
        "assessmentId": "q",
        "score": 1,
        "maxScore": 2,
    }
    items.append(Entry(3, "ag.evt.learning.b.assessment_submitted", json.dumps(quiz).encode()))
    applied = Projector(store).apply(items)
    assert applied.touched == {"a": {"activity", "engagement"}, "b": {"activity", "performance"}}


def test_read_only_opens_cannot_write_and_reads_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "e.duckdb"
    store = Store(path)
    Projector(store).apply(batch(1, 3))
    store.close()
    ro = Store(path, read_only=True)
    assert ro.last_seq() == 3
    with pytest.raises(Exception, match="read-only"):
        ro.con.execute("DELETE FROM events")
    ro.close()


def test_sql_on_the_aggregators_connection_cannot_touch_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(Exception, match="disabled"):
        store.con.execute(f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')")
