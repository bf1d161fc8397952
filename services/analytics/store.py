"""The DuckDB projection of the event log: schema, and the one transactional write path.

Each batch of events is inserted as one Arrow table, and the last processed stream
sequence is written in the same transaction (the eventsourcing rule: a projection records its
position together with its effect). A crash before COMMIT leaves neither; a crash after COMMIT
but before the JetStream ack gets the batch redelivered, and ``Projector`` skips every event at or
below the stored sequence. So nothing is lost and nothing counted twice.

Tables (column names are snake_case; ``ts`` is epoch ms, ``epoch_ms(ts)`` gives a TIMESTAMP):

- ``events``: one row per valid event: ``seq`` (stream sequence), ``ts``, ``type`` (the event
  tag, e.g. ``chat.message``), ``context_id``, ``user_id``, ``session_id``, ``assessment_id``,
  ``score``, ``max_score``, ``completed``, ``subject`` and ``raw`` (the event JSON).
- ``invalid_events``: what was refused, with the reason and the original bytes.
- ``checkpoint``: the last processed stream sequence (one row).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from services.analytics.rows import COLUMNS, Columns, Invalid

__all__ = ["Store", "SCHEMA_VERSION", "checkpoint", "db_path"]

SCHEMA_VERSION = 1

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS events (
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        type VARCHAR NOT NULL,
        context_id VARCHAR NOT NULL,
        user_id VARCHAR,
        session_id VARCHAR,
        assessment_id VARCHAR,
        score DOUBLE,
        max_score DOUBLE,
        completed BOOLEAN,
        subject VARCHAR NOT NULL,
        raw VARCHAR NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS invalid_events (
        seq BIGINT NOT NULL,
        subject VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        raw BLOB NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS checkpoint (
        id INTEGER PRIMARY KEY,
        last_seq BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        schema_version INTEGER NOT NULL
    )
    """,
)


def db_path(data_dir: Path) -> Path:
    return data_dir / "analytics" / "events.duckdb"


class Store:
    """One DuckDB database file. Read-write opens create the schema; read-only ones do not."""

    def __init__(
        self, path: Path | str, *, read_only: bool = False, external_access: bool = False
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # Without external access, SQL on this connection (ad-hoc queries included) can read or
        # write no file but the database itself: no read_csv('/etc/…'), COPY, ATTACH or httpfs.
        config: dict[str, Any] = {"enable_external_access": external_access}
        if not read_only:
            # The WAL is folded into the file when it reaches this size. DuckDB's 16 MB default
            # checkpoints every few batches while catching up: 1M events took 6.2 s against
            # 4.2 s at 64 MB (and the file came out larger); a bigger WAL only lengthens the
            # replay of the WAL after a crash.
            config["checkpoint_threshold"] = "64MB"
        self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        if not read_only:
            for ddl in _DDL:
                self.con.execute(ddl)
            self.con.execute(
                "INSERT INTO checkpoint SELECT 1, 0, 0, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM checkpoint)",
                [SCHEMA_VERSION],
            )
        # Test hook: runs after the rows are in, before COMMIT (crash-safety tests fail here).
        self.before_commit: Callable[[], None] | None = None

    def close(self) -> None:
        self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor for another thread (DuckDB connections are not shared across threads)."""
        return self.con.cursor()

    def last_seq(self) -> int:
        return checkpoint(self.con)

    def counts(self) -> tuple[int, int]:
        """(valid events, invalid events) stored."""
        row = self.con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM invalid_events)"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def append(self, rows: pa.Table | None, invalid: Sequence[Invalid], last_seq: int) -> None:
        """Append one batch (``rows`` from ``arrow_table``) and move the checkpoint to
        ``last_seq``, atomically. Hardly any Python runs here (it ran building ``rows``), so a
        thread reading the log beside it does not slow the write down by holding the GIL."""
        con = self.con
        # Few executes: each hands the GIL back and waits to retake it, which costs up to a
        # switch interval while the reading thread is busy.
        insert = f"INSERT INTO events SELECT {', '.join(COLUMNS)} FROM _batch; " if rows else ""
        checkpoint = (
            f"UPDATE checkpoint SET last_seq = {int(last_seq)}, "
            f"updated_ms = {int(time.time() * 1000)} WHERE id = 1"
        )
        con.execute("BEGIN TRANSACTION")  # also completes any result left open on `con`
        try:
            if insert:
                con.register("_batch", rows)
            con.execute(insert + checkpoint).fetchall()
            if invalid:
                appender = con.appender("invalid_events")
                appender.append_rows([(i.seq, i.subject, i.reason, i.raw) for i in invalid])
                appender.flush()
            if self.before_commit is not None:
                self.before_commit()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            if insert:
                with contextlib.suppress(duckdb.Error):  # not registered: BEGIN failed
                    con.unregister("_batch")


_TYPES = {
    "seq": pa.int64(),
    "ts": pa.int64(),
    "type": pa.string(),
    "context_id": pa.string(),
    "user_id": pa.string(),
    "session_id": pa.string(),
    "assessment_id": pa.string(),
    "score": pa.float64(),
    "max_score": pa.float64(),
    "completed": pa.bool_(),
    "subject": pa.string(),
}


def arrow_table(cols: Columns) -> pa.Table:
    """``columns``' lists as the Arrow table ``Store.append`` inserts."""
    arrays = {name: pa.array(cols[name], _TYPES[name]) for name in _TYPES}
    arrays["raw"] = pa.array(cols["raw"], pa.binary()).cast(pa.string())
    return pa.table(arrays)


def checkpoint(cur: duckdb.DuckDBPyConnection) -> int:
    """The last stored sequence, as ``cur``'s snapshot sees it."""
    row = cur.execute("SELECT last_seq FROM checkpoint WHERE id = 1").fetchone()
    return int(row[0]) if row else 0
