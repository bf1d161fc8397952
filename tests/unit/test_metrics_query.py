"""Ad-hoc SQL: DuckDB's parser decides what may run; only one read-only SELECT does."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.analytics.query import Refused, check_read_only, run_query
from services.analytics.store import Store


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM events",
        "select type, count(*) from events group by all",
        "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
        "FROM events LIMIT 3",
        "VALUES (1), (2)",
        "SUMMARIZE events",
        "DESCRIBE events",
        "  SELECT 1 ;  ",
    ],
)
def test_single_read_statements_are_allowed(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(
    "sql, why",
    [
        ("INSERT INTO events SELECT * FROM events", "INSERT"),
        ("DELETE FROM events", "DELETE"),
        ("UPDATE checkpoint SET last_seq = 0", "UPDATE"),
        ("DROP TABLE events", "DROP"),
        ("CREATE TABLE x AS SELECT 1", "CREATE"),
        ("COPY events TO '/tmp/x.csv'", "COPY"),
        ("ATTACH '/tmp/other.db' AS o", "ATTACH"),
        ("PRAGMA database_size", "PRAGMA"),
        ("SET threads = 1", "SET"),
        ("CALL checkpoint()", "CALL"),
        ("EXPLAIN ANALYZE DELETE FROM events", "EXPLAIN"),
        ("CHECKPOINT", "only SELECT"),
        ("SELECT 1; DELETE FROM events", "exactly one statement"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("", "exactly one statement"),
        ("SELEC 1", "cannot parse"),
        ("select 1 /* ; */ ; drop table events", "exactly one statement"),
    ],
)
def test_anything_else_is_refused_before_it_runs(sql: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        check_read_only(sql)


def test_a_query_returns_columns_types_and_capped_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    reply = run_query(
        store.cursor(), "SELECT range AS n, 'x' AS s FROM range(5)", max_rows=3, timeout_s=5
    )
    assert reply.columns == ["n", "s"] and reply.types == ["BIGINT", "VARCHAR"]
    assert reply.rows == [[0, "x"], [1, "x"], [2, "x"]] and reply.truncated


def test_a_refused_statement_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    reply = run_query(store.cursor(), "DELETE FROM checkpoint", max_rows=10, timeout_s=5)
    assert reply.code == "refused"
    assert store.last_seq() == 0


def test_a_long_query_is_interrupted(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    reply = run_query(
        store.cursor(),
        "SELECT count(*) FROM range(1000000000) a, range(1000000000) b",
        max_rows=1,
        timeout_s=0.3,
    )
    assert reply.code == "timeout"
    # the cursor's transaction is over and the database still answers
    assert run_query(store.cursor(), "SELECT 1", max_rows=1, timeout_s=5).rows == [[1]]


def test_sql_errors_are_reported_not_raised(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    reply = run_query(store.cursor(), "SELECT nope FROM events", max_rows=1, timeout_s=5)
    assert reply.code == "failed" and "nope" in (reply.error or "")
