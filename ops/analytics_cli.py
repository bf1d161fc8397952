"""``atomic-guide replay | query | export``: the analytics projection from the command line.

While the stack runs, the aggregator holds ``<data dir>/analytics/events.duckdb`` read-write and
DuckDB lets no other process open it, not even read-only. So:

- ``query`` sends its SQL to the aggregator (NATS request/reply), which checks it is one read-only
  statement and runs it on a cursor of its own; with no aggregator answering it opens the file
  read-only itself (same checks, same code).
- ``replay`` always writes a fresh file next to the live one, verifies it (row count = events in
  the log, no duplicates, and every context's metric values equal to the live projection's at the
  same ``now`` and stream position: asked of the aggregator over NATS, or read from the live file
  when no aggregator holds it), and then swaps it in only if no aggregator holds the live file
  (the old one is kept as ``events-<time>.bak.duckdb``). While the aggregator runs it reports
  where the new file is instead: swapping a file under a running writer would lose its updates.
  If no NATS server answers, it starts the embedded one on the data dir's JetStream store for the
  duration of the command.
- ``export`` writes Parquet partitioned by ``type`` and ``date`` (UTC day of ``ts``) with DuckDB
  ``COPY``: from the live file when it can be opened, else from a projection rebuilt from the log
  into a temporary file (the same events, taken from the source of truth).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from shared.config import Settings

__all__ = ["register"]

EXIT_REFUSED = 2
EXIT_FAILED = 1


def register(sub: Any) -> None:
    """Add ``replay``, ``query`` and ``export`` to the ``atomic-guide`` subcommands."""
    rp = sub.add_parser("replay", help="rebuild the analytics projection from the event log")
    rp.add_argument("--data-dir", type=Path)
    rp.add_argument("--output", type=Path, help="where to write the new DuckDB file")
    rp.add_argument("--no-swap", action="store_true", help="never replace the live file")
    rp.add_argument("--batch", type=int, default=5000, help="events per transaction")
    rp.set_defaults(func=cmd_replay)

    q = sub.add_parser("query", help="read-only SQL over the analytics events")
    q.add_argument("sql")
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    q.add_argument("--max-rows", type=int, help="cap (default AG_QUERY_MAX_ROWS)")
    q.add_argument("--data-dir", type=Path)
    q.set_defaults(func=cmd_query)

    ex = sub.add_parser("export", help="the events as partitioned Parquet")
    ex.add_argument("--parquet", type=Path, required=True, metavar="DIR")
    ex.add_argument("--overwrite", action="store_true", help="replace what DIR holds")
    ex.add_argument("--data-dir", type=Path)
    ex.set_defaults(func=cmd_export)


def _err(msg: str) -> None:
    print(f"atomic-guide: {msg}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    from ops.stack import resolve_settings

    return resolve_settings(data_dir=args.data_dir)


def _live_path(settings: Settings) -> Path:
    from services.analytics.store import db_path

    return db_path(settings.data_dir.resolve())


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


@contextlib.asynccontextmanager
async def _log_connection(settings: Settings, start_embedded: bool) -> AsyncIterator[Any]:
    """A NATS connection to the stack's server; optionally the embedded one started for us."""
    from ops.analytics_replay import connect_cli
    from ops.datadir import DataDirLock
    from ops.natsd import start_nats

    nc = None
    if settings.nats_url:
        try:
            nc = await connect_cli(settings.nats_url)
        except Exception:
            nc = None
    server = None
    lock = None
    if nc is None:
        if not start_embedded or os.environ.get("AG_NATS_URL"):
            raise ConnectionError(f"no NATS server answers at {settings.nats_url or '(none)'}")
        data_dir = settings.data_dir.resolve()
        if not (data_dir / "nats").exists():
            raise ConnectionError(f"no event log in {data_dir} (has the stack ever run there?)")
        # Our own nats-server on the store: never beside a running stack's (DataDirInUse).
        lock = DataDirLock(data_dir, "atomic-guide replay/export").acquire()
        server = start_nats(
            data_dir,
            settings.nats_sync_interval,
            data_dir / "nats-cli.log",
            keep_fds=(lock.fd,),
        )
        print(
            f"[replay] started nats-server on the data dir's store ({server.url})", file=sys.stderr
        )
        nc = await connect_cli(server.url)
    try:
        yield nc
    finally:
        await nc.close()
        if server is not None:
            server.stop()
        if lock is not None:
            lock.release()


# --- replay ------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        return asyncio.run(_replay(settings, args))
    except ConnectionError as exc:
        _err(str(exc))
        return EXIT_FAILED


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from ops.analytics_replay import (
        Progress,
        live_seq_via_rpc,
        live_via_file,
        live_via_rpc,
        rebuild,
        verify,
    )
    from services.analytics import metrics
    from services.analytics.store import Store
    from shared.timefmt import now_ms

    live = _live_path(settings)
    stamp = _stamp()
    out: Path = args.output or live.with_name(f"replay-{stamp}.duckdb")
    out.parent.mkdir(parents=True, exist_ok=True)
    async with _log_connection(settings, start_embedded=True) as bus:
        bar: Progress | None = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = Progress(total)
            bar.update(done)

        rebuilt = await rebuild(bus, out, batch=args.batch, progress=progress)
        if bar is not None:
            bar.update(rebuilt.messages, final=True)
        print(
            f"[replay] {rebuilt.messages:,} events ({rebuilt.stored:,} stored, "
            f"{rebuilt.invalid:,} invalid) up to seq {rebuilt.last_seq} "
            f"in {rebuilt.seconds:.1f}s into {out}",
            file=sys.stderr,
        )
        aggregator_seq = await live_seq_via_rpc(bus)
        now = now_ms()
        window = settings.metrics_window_s
        store = Store(out, read_only=True)
        try:
            view = None
            locked = aggregator_seq is not None
            if aggregator_seq is not None:
                upto = min(rebuilt.last_seq, aggregator_seq)
                contexts = metrics.all_contexts(store.con, upto)
                view = await live_via_rpc(bus, contexts, now, upto)
            elif live.exists():
                try:
                    probe = Store(live, read_only=True)
                    live_seq = probe.last_seq()
                    probe.close()
                except duckdb.Error as exc:
                    if not _is_locked(exc):
                        raise
                    locked = True
                    upto = rebuilt.last_seq
                    print(
                        "[replay] the live file is locked but no aggregator answers; "
                        "metric values not compared",
                        file=sys.stderr,
                    )
                else:
                    upto = min(rebuilt.last_seq, live_seq)
                    contexts = metrics.all_contexts(store.con, upto)
                    view = live_via_file(live, contexts, now, upto, window)
            else:
                upto = rebuilt.last_seq
            verdict = verify(rebuilt, store, view, now, window, upto)
        finally:
            store.close()
    if view is not None:
        print(
            f"[replay] compared {verdict.compared_contexts} contexts with {view.source} "
            f"up to seq {upto} at now={now}",
            file=sys.stderr,
        )
    if not verdict.ok:
        for p in verdict.problems:
            _err(f"verification failed: {p}")
        _err(f"the rebuilt projection is left at {out} (not swapped in)")
        return EXIT_FAILED
    print("[replay] verified", file=sys.stderr)
    if args.no_swap or locked:
        why = "--no-swap" if args.no_swap else "the aggregator is running and holds the live file"
        print(f"[replay] not swapped in ({why}). New projection: {out}")
        print(f"         to use it: stop the stack, then  mv {out} {live}")
        return 0
    if live.exists():
        backup = live.with_name(f"events-{stamp}.bak.duckdb")
        os.replace(live, backup)
        wal = live.with_name(live.name + ".wal")
        if wal.exists():
            os.replace(wal, backup.with_name(backup.name + ".wal"))
        print(f"[replay] previous projection kept as {backup}", file=sys.stderr)
    os.replace(out, live)
    print(f"[replay] swapped in: {live}")
    return 0


def _stamp() -> str:
    """A file-name timestamp, unique per run (two replays may start within one second)."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"


# --- query -------------------------------------------------------------------------------------
def cmd_query(args: argparse.Namespace) -> int:
    from shared.schemas.analytics import QueryReply

    settings = _settings(args)
    max_rows = args.max_rows or settings.query_max_rows
    reply: QueryReply | None = asyncio.run(_query_rpc(settings, args.sql, max_rows))
    if reply is None:
        try:
            reply = _query_file(settings, args.sql, max_rows)
        except FileNotFoundError as exc:
            _err(str(exc))
            return EXIT_FAILED
        except duckdb.Error as exc:
            if _is_locked(exc):
                _err("the aggregator holds the analytics database but does not answer on NATS")
            else:
                _err(f"cannot open the analytics database: {exc}")
            return EXIT_FAILED
    if reply.error is not None:
        _err(f"query {reply.code or 'failed'}: {reply.error}")
        return EXIT_REFUSED if reply.code == "refused" else EXIT_FAILED
    _print_result(reply, "csv" if args.csv else "json" if args.json else "table")
    if reply.truncated:
        _err(f"(output truncated to {len(reply.rows)} rows)")
    return 0


async def _query_rpc(settings: Settings, sql: str, max_rows: int) -> Any:
    """The aggregator's answer, or None when no aggregator (or no NATS) is there to ask."""
    from ops.analytics_replay import connect_cli
    from shared import subjects
    from shared.bus.port import NoResponders, Unavailable
    from shared.schemas.analytics import QueryReply, QueryRequest
    from shared.schemas.wire import encode

    if not settings.nats_url:
        return None
    try:
        bus = await connect_cli(settings.nats_url)
    except Exception:
        return None
    try:
        data = await bus.request(
            subjects.RPC_ANALYTICS_QUERY,
            encode(QueryRequest(sql=sql, maxRows=max_rows)),
            timeout=settings.query_timeout_s + 5,
        )
    except NoResponders:
        return None
    except Unavailable as exc:
        return QueryReply(error=f"the aggregator did not answer: {exc}", code="failed")
    finally:
        await bus.close()
    return msgspec.json.decode(data, type=QueryReply)


def _query_file(settings: Settings, sql: str, max_rows: int) -> Any:
    from services.analytics.query import run_query
    from services.analytics.store import Store

    path = _live_path(settings)
    if not path.exists():
        raise FileNotFoundError(f"no analytics database at {path} (has the aggregator run?)")
    store = Store(path, read_only=True)
    try:
        return run_query(
            store.con.cursor(), sql, max_rows=max_rows, timeout_s=settings.query_timeout_s
        )
    finally:
        store.close()


def _print_result(reply: Any, fmt: str) -> None:
    from services.analytics.query import jsonable

    if fmt == "json":
        objs = [dict(zip(reply.columns, row, strict=True)) for row in reply.rows]
        sys.stdout.write(msgspec.json.encode(objs, enc_hook=jsonable).decode() + "\n")
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(reply.columns)
        w.writerows(reply.rows)
        return
    cells = [[_cell(v) for v in row] for row in reply.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(reply.columns)]
    print("  ".join(c.ljust(w) for c, w in zip(reply.columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")


def _cell(value: Any, limit: int = 80) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- export ------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    settings = _settings(args)
    target: Path = args.parquet.resolve()
    if target.exists() and any(target.iterdir()) and not args.overwrite:
        _err(f"{target} is not empty (use --overwrite)")
        return EXIT_FAILED
    live = _live_path(settings)
    try:
        n = _export_from(live, target, args.overwrite)
        print(f"[export] {n:,} events from {live} -> {target}", file=sys.stderr)
        return 0
    except FileNotFoundError:
        pass
    except duckdb.Error as exc:
        if not _is_locked(exc):
            _err(f"export failed: {exc}")
            return EXIT_FAILED
    # The aggregator holds the live file: take the events from the log instead.
    try:
        return asyncio.run(_export_via_log(settings, target, args.overwrite))
    except ConnectionError as exc:
        _err(str(exc))
        return EXIT_FAILED


async def _export_via_log(settings: Settings, target: Path, overwrite: bool) -> int:
    from ops.analytics_replay import Progress, rebuild

    with tempfile.TemporaryDirectory(prefix="ag-export-") as tmp:
        path = Path(tmp) / "events.duckdb"
        async with _log_connection(settings, start_embedded=True) as bus:
            bar: Progress | None = None

            def progress(done: int, total: int) -> None:
                nonlocal bar
                if bar is None:
                    bar = Progress(total, label="export")
                bar.update(done)

            rebuilt = await rebuild(bus, path, progress=progress)
            if bar is not None:
                bar.update(rebuilt.messages, final=True)
        n = _export_from(path, target, overwrite)
    print(f"[export] {n:,} events (rebuilt from the log) -> {target}", file=sys.stderr)
    return 0


def _export_from(path: Path, target: Path, overwrite: bool) -> int:
    from services.analytics.store import Store

    if not path.exists():
        raise FileNotFoundError(path)
    store = Store(path, read_only=True, external_access=True)
    try:
        row = store.con.execute("SELECT count(*) FROM events").fetchone()
        count = int(row[0]) if row else 0
        if count == 0:
            target.mkdir(parents=True, exist_ok=True)
            return 0
        quoted = str(target).replace("'", "''")
        options = "FORMAT PARQUET, PARTITION_BY (type, date), WRITE_PARTITION_COLUMNS true"
        if overwrite:
            options += ", OVERWRITE true"
        store.con.execute(
            "COPY (SELECT *, strftime(epoch_ms(ts), '%Y-%m-%d') AS date FROM events ORDER BY seq)"
            f" TO '{quoted}' ({options})"
        )
        return count
    finally:
        store.close()
