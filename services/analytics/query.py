"""Read-only ad-hoc SQL over the projection, for ``atomic-guide query`` (sans-I/O over a cursor).

Two locks, either of which would do alone:

1. DuckDB's own parser (``duckdb.extract_statements``) must find exactly one statement, of type
   SELECT (``SELECT``, ``WITH ... SELECT``, ``FROM t``, ``VALUES``, ``SUMMARIZE`` …). Anything else,
   ``COPY``, ``ATTACH``, ``PRAGMA``, ``SET``, ``CALL``, ``EXPLAIN ANALYZE`` (which runs its
   statement), a second statement, is refused before it runs. No regex looks at the text.
2. The statement runs inside ``BEGIN TRANSACTION READ ONLY`` on a cursor of its own, rolled back
   afterwards, so even a SELECT with a side effect could not write to the database.

The aggregator's connection also has DuckDB's external access disabled (``Store``), so a SELECT
cannot read files either (``read_csv('/etc/passwd')``).

A statement that runs longer than the timeout is interrupted (``cursor.interrupt()`` from a
timer thread). Results are capped at ``max_rows`` rows (``truncated`` says so).
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb

from shared.schemas.analytics import QueryReply

__all__ = ["Refused", "check_read_only", "run_query"]


class Refused(ValueError):
    """The SQL is not a single read-only statement."""


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise Refused(f"cannot parse: {exc}") from None
    if len(statements) != 1:
        raise Refused(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = getattr(kind, "name", str(kind))
        raise Refused(f"only SELECT queries are allowed, not {name}")


def run_query(
    cur: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int, timeout_s: float
) -> QueryReply:
    """Run one read-only statement on ``cur`` (a cursor of its own, used by one thread)."""
    try:
        check_read_only(sql)
    except Refused as exc:
        return QueryReply(error=str(exc), code="refused")
    timer = threading.Timer(timeout_s, cur.interrupt)
    timer.daemon = True
    cur.execute("BEGIN TRANSACTION READ ONLY")
    timer.start()
    try:
        cur.execute(sql)
        columns = [d[0] for d in cur.description or ()]
        types = [str(d[1]) for d in cur.description or ()]
        rows = cur.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        return QueryReply(error=f"query exceeded {timeout_s:g} s", code="timeout")
    except duckdb.Error as exc:
        return QueryReply(error=str(exc), code="failed")
    finally:
        timer.cancel()
        _rollback(cur)
    truncated = len(rows) > max_rows
    return QueryReply(
        columns=columns,
        types=types,
        rows=[list(r) for r in rows[:max_rows]],
        truncated=truncated,
    )


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.execute("ROLLBACK")
    except duckdb.Error:  # an interrupted or failed statement may have ended the transaction
        pass


def jsonable(value: Any) -> Any:
    """msgspec encodes dates, decimals, UUIDs and bytes itself; anything else as text."""
    return str(value)
