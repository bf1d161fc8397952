"""The DuckDB projection of the event log: schema, and the one transactional write path.

Each batch of events is appended with DuckDB's bulk appender, and the last processed stream
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

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from services.analytics.rows import COLUMNS, Invalid, Row

__all__ = ["Store", "SCHEMA_VERSION", "db_path"]

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
        self.con = duckdb.connect(
            str(self.path),
            read_only=read_only,
            config={"enable_external_access": external_access},
        )
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
        row = self.con.execute("SELECT last_seq FROM checkpoint WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def counts(self) -> tuple[int, int]:
        """(valid events, invalid events) stored."""
        row = self.con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM invalid_events)"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def append(self, rows: Sequence[Row], invalid: Sequence[Invalid], last_seq: int) -> None:
        """Append one batch and move the checkpoint to ``last_seq``, atomically."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            if rows:
                appender = con.appender("events", columns=list(COLUMNS))
                appender.append_rows(rows)
                appender.flush()
            if invalid:
                appender = con.appender("invalid_events")
                appender.append_rows([(i.seq, i.subject, i.reason, i.raw) for i in invalid])
                appender.flush()
            con.execute(
                "UPDATE checkpoint SET last_seq = ?, updated_ms = ? WHERE id = 1",
                [last_seq, int(time.time() * 1000)],
            )
            if self.before_commit is not None:
                self.before_commit()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
