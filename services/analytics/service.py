"""The analytics aggregator: event log -> DuckDB -> live metric updates, current values, SQL.

It is the only process that opens the DuckDB file read-write (DuckDB lets no other process in
while a writer holds it), so everything that reads the projection while the stack runs comes here
over NATS: gateways ask for current values (``RPC_METRICS_CURRENT``), ``atomic-guide query`` sends
read-only SQL (``RPC_ANALYTICS_QUERY``).

Consumption: the whole log read in order from just after the stored checkpoint (``Bus.tail``, no
acks). The checkpoint is written in the same DuckDB transaction as the batch's rows, so it is the
one position of record: a crash mid-batch rolls both back, a replaced or deleted DuckDB file is
rebuilt from the start rather than silently missing what the old one had, and anything read twice
is skipped by sequence.

Threads: DuckDB calls block, so they run off the event loop. One thread owns the write connection
(ingest and metric computation, in order); ad-hoc queries run on other threads with cursors of
their own, so a slow query does not stall ingest. A DuckDB write failure is fatal: the process
stops (the supervisor restarts it) rather than skip a batch it could not store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import duckdb
import msgspec
from prometheus_client import Counter, Gauge, Histogram

from services.analytics import metrics
from services.analytics.projection import Applied, Prepared, Projector
from services.analytics.query import jsonable, run_query
from services.analytics.store import Store, checkpoint, db_path
from services.analytics.throttle import Throttle
from services.analytics.watch import WatchBook
from shared import subjects, tasks
from shared.bus.port import Bus, LogTail, Message, Subscription, Unavailable
from shared.config import Settings
from shared.logs import get_logger
from shared.schemas.analytics import (
    CurrentReply,
    CurrentRequest,
    QueryReply,
    QueryRequest,
)
from shared.schemas.commands import AnalyticsWatch
from shared.schemas.frames import MetricUpdateData
from shared.schemas.wire import encode_frame
from shared.timefmt import ms_to_ts, now_ms

__all__ = ["AnalyticsService", "DURABLE"]

log = get_logger(__name__)
T = TypeVar("T")

DURABLE = "analytics"
MINUTE_MS = 60_000
CATCH_UP_GAP_MS = 5000  # recompute a metric at most this often while working through a backlog
_current_decoder = msgspec.json.Decoder(CurrentRequest)
_watch_decoder = msgspec.json.Decoder(AnalyticsWatch)
_query_decoder = msgspec.json.Decoder(QueryRequest)
_encoder = msgspec.json.Encoder(enc_hook=jsonable)

INGESTED = Counter("ag_analytics_events_total", "Events appended to DuckDB", ["outcome"])
BATCH_SECONDS = Histogram(
    "ag_analytics_batch_seconds",
    "DuckDB transaction time per batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LAG = Gauge("ag_analytics_consumer_lag", "Events in the log not yet processed")
UPDATES = Counter("ag_analytics_updates_total", "metric_update frames published", ["metric"])


class AnalyticsService:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        *,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.window_s = settings.metrics_window_s
        self.throttle = Throttle(1000)
        self.watch = WatchBook(settings.heartbeat_s)
        self.on_fatal = on_fatal or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self._db = ThreadPoolExecutor(1, thread_name_prefix="duckdb-writer")
        # Metrics are computed on a cursor of their own, in a thread of their own, so catching
        # up never waits for one (1M-event catch-up, this machine: 135k -> 145k events/s).
        self._metrics = ThreadPoolExecutor(1, thread_name_prefix="duckdb-metrics")
        self._metrics_cur: duckdb.DuckDBPyConnection | None = None
        self._queries = ThreadPoolExecutor(2, thread_name_prefix="duckdb-query")
        self._store: Store | None = None
        self._projector: Projector | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []
        self._tail: LogTail | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._backlog = False  # more than a batch still waiting in the log
        self._version = 0

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        path = db_path(self.settings.data_dir)
        self._store = await self._in_db(Store, path)
        self._projector = await self._in_db(Projector, self._store)
        self._metrics_cur = await self._in_db(self._store.cursor)
        last = self._projector.last_seq
        end = await self.bus.log_end()
        if end < last:
            log.error(
                "projection is ahead of the event log (was the stream reset?); "
                "run `atomic-guide replay` to rebuild it",
                extra={"lastSeq": last, "streamLastSeq": end},
            )
        # The stored checkpoint is the position of record: read the log from just after it.
        self._tail = self.bus.tail(subjects.EVENTS_ALL, last + 1, name=DURABLE)
        self._subs = [
            await self.bus.subscribe(
                subjects.RPC_METRICS_CURRENT, self._on_current, queue="analytics"
            ),
            await self.bus.subscribe(
                subjects.RPC_ANALYTICS_QUERY, self._on_query, queue="analytics"
            ),
            await self.bus.subscribe(subjects.ANALYTICS_WATCH, self._on_watch),
        ]
        self._tasks = [
            asyncio.create_task(self._ingest_loop(), name="analytics-ingest"),
            asyncio.create_task(self._publish_loop(), name="analytics-publish"),
            asyncio.create_task(self._tick_loop(), name="analytics-tick"),
        ]
        log.info("analytics ready", extra={"db": str(path), "lastSeq": last})

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await tasks.stop(self._tasks)
        if self._inflight is not None:  # let a batch DuckDB already has be committed
            await asyncio.gather(self._inflight, return_exceptions=True)
        if self._tail is not None:
            await self._tail.close()
        loop = asyncio.get_running_loop()
        # A batch already in DuckDB's hands finishes (commits or rolls back) before we close.
        await loop.run_in_executor(None, partial(self._queries.shutdown, wait=True))
        await loop.run_in_executor(None, partial(self._metrics.shutdown, wait=True))
        if self._metrics_cur is not None:
            self._metrics_cur.close()
        await loop.run_in_executor(None, partial(self._db.shutdown, wait=True))
        if self._store is not None:
            self._store.close()

    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, partial(fn, *args))

    async def _in_metrics(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._metrics, partial(fn, *args))

    # --- ingest ---------------------------------------------------------------------------
    async def _ingest_loop(self) -> None:
        """Fetch and prepare the next batch while DuckDB commits the previous one (at most one
        in flight). Preparing (decode, validate, Arrow) runs here, on the event loop, so the
        DuckDB thread only writes: the two then overlap instead of taking turns at the GIL.

        Exactly once: a batch's rows and its last sequence (the checkpoint) commit in one
        transaction, the projector skips sequences at or below the checkpoint, and after a
        restart the log is read again from the checkpoint. A crash mid-batch rolls it back.
        """
        assert self._tail is not None and self._projector is not None
        batch = self.settings.analytics_batch
        linger = self.settings.analytics_linger_ms / 1000
        spacing = self.settings.analytics_commit_interval_ms / 1000
        last_commit = -spacing
        while True:
            entries = await self._tail.fetch(batch, timeout=5.0)
            if not entries:
                continue
            if len(entries) < batch:
                # Live: a DuckDB transaction costs ~3 ms of CPU whatever its size, so one per
                # event would take a core at a few hundred events/s. A lone event waits
                # `linger`; while events keep coming, commits are `spacing` apart.
                wait = max(linger, last_commit + spacing - time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)  # a batching window, not synchronisation
                    entries += await self._tail.fetch(batch - len(entries), timeout=0)
            try:
                prepared = self._projector.prepare(entries)
            except Exception:
                log.critical("cannot project the event log; stopping", exc_info=True)
                self.on_fatal()
                return
            if self._inflight is not None and not await self._inflight:
                return
            last_commit = time.monotonic()
            self._inflight = asyncio.create_task(self._commit(prepared))

    async def _commit(self, prepared: Prepared) -> bool:
        """Store one batch (rows and checkpoint in one transaction)."""
        assert self._projector is not None and self._tail is not None
        started = time.perf_counter()
        try:
            applied = await self._in_db(self._projector.commit, prepared)
        except Exception:
            log.critical("cannot write the analytics projection; stopping", exc_info=True)
            self.on_fatal()
            return False
        BATCH_SECONDS.observe(time.perf_counter() - started)
        pending = await self._tail.pending()
        LAG.set(pending)
        self._record(applied, pending)
        return True

    def _record(self, applied: Applied, pending: int) -> None:
        INGESTED.labels("stored").inc(applied.stored)
        INGESTED.labels("invalid").inc(applied.invalid)
        INGESTED.labels("skipped").inc(applied.skipped)
        self._backlog = pending > self.settings.analytics_batch
        if applied.touched:
            now = now_ms()
            gap = CATCH_UP_GAP_MS if self._backlog else 0
            watched = self.watch.watched(time.monotonic())
            for ctx, touched in applied.touched.items():
                if ctx in watched:  # nobody has a dashboard open elsewhere: nothing to push
                    self.throttle.mark(ctx, touched, now, gap)
                    self._wake.set()

    # --- computing and publishing ---------------------------------------------------------
    def _compute(
        self, wanted: dict[str, list[str]], now: int, upto: int | None = None
    ) -> tuple[dict[str, dict[str, dict[str, Any]]], int, int]:
        """In the metrics thread: metric -> context -> value, the computation's version and
        the checkpoint the values reflect (all read from one snapshot, while batches commit)."""
        cur = self._metrics_cur
        assert cur is not None
        cur.begin()
        try:
            seq = checkpoint(cur)
            out = {
                m: metrics.compute(cur, m, ctxs, now, self.window_s, upto)
                for m, ctxs in wanted.items()
            }
        finally:
            cur.rollback()  # read only: nothing to keep
        # Strictly increasing, and still increasing across restarts while the clock is sane.
        self._version = max(self._version + 1, time.time_ns() // 1000)
        return out, self._version, seq

    async def _publish_loop(self) -> None:
        while True:
            nxt = self.throttle.next_due()
            timeout = None if nxt is None else max(0.0, (nxt - now_ms()) / 1000)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            now = now_ms()
            due = self.throttle.due(now)
            if not due:
                continue
            wanted: dict[str, list[str]] = defaultdict(list)
            for ctx, metric in due:
                wanted[metric].append(ctx)
            try:
                values, version, _ = await self._in_metrics(self._compute, dict(wanted), now)
            except Exception:
                log.exception("metric computation failed")
                continue
            await self._offer(values, version, now)

    async def _offer(
        self, values: dict[str, dict[str, Any]], version: int, now: int, timed: bool = False
    ) -> None:
        """Publish the values that changed (and may go out now); the throttle defers the rest."""
        stamp = ms_to_ts(now)
        for metric, per_ctx in values.items():
            for ctx, value in per_ctx.items():
                if self.throttle.offer(ctx, metric, value, now, timed=timed):
                    await self._publish(ctx, metric, value, stamp, version)

    async def _publish(
        self, ctx: str, metric: str, value: dict[str, Any], stamp: str, version: int
    ) -> None:
        frame = encode_frame("metric_update", stamp, MetricUpdateData(metric, value, stamp))
        headers = {subjects.HDR_METRIC: metric, subjects.HDR_VERSION: str(version)}
        try:
            await self.bus.publish(subjects.metrics_live(ctx), frame, headers)
        except Unavailable as exc:
            log.warning("metric update not published", extra={"error": repr(exc)})
            return
        UPDATES.labels(metric).inc()

    def _active(self, since: int, now: int) -> list[str]:
        assert self._metrics_cur is not None
        return metrics.active_contexts(self._metrics_cur, since, now)

    async def _tick_loop(self) -> None:
        """Windowed values change as time passes: recompute contexts with recent events."""
        horizon = max(metrics.DAY_MS, self.window_s * 1000) + MINUTE_MS
        while True:
            await asyncio.sleep(self.settings.metrics_tick_s)  # a periodic timer
            if self._backlog:
                continue  # values are stale until caught up; batches mark what they touch
            now = now_ms()
            try:
                ctxs = await self._in_metrics(self._active, now - horizon, now)
            except Exception:
                log.exception("active contexts query failed")
                continue
            watched = self.watch.watched(time.monotonic())
            ctxs = [c for c in ctxs if c in watched]
            if not ctxs:
                continue
            wanted = {"activity": ctxs, "engagement": ctxs}
            try:
                values, version, _ = await self._in_metrics(self._compute, wanted, now)
            except Exception:
                log.exception("metric computation failed")
                continue
            await self._offer(values, version, now, timed=True)

    async def _on_watch(self, msg: Message) -> None:
        try:
            beat = _watch_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        self.watch.heartbeat(beat.gatewayId, beat.contexts, time.monotonic(), beat.final)

    # --- RPC ------------------------------------------------------------------------------
    async def _on_current(self, msg: Message) -> None:
        try:
            req = _current_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            await msg.respond(_encoder.encode(CurrentReply(error=f"bad request: {exc}")))
            return
        assert self._projector is not None
        self.watch.asked(req.contextIds, time.monotonic())  # a dashboard opens: push from now
        now = req.now if req.now is not None else now_ms()
        wanted = {m: list(req.contextIds) for m in dict.fromkeys(req.metrics)}
        try:
            values, version, seq = await self._in_metrics(self._compute, wanted, now, req.uptoSeq)
        except Exception as exc:
            log.exception("current metrics failed")
            await msg.respond(_encoder.encode(CurrentReply(error=repr(exc))))
            return
        by_ctx: dict[str, dict[str, Any]] = {c: {} for c in req.contextIds}
        for metric, per_ctx in values.items():
            for ctx, value in per_ctx.items():
                by_ctx[ctx][metric] = value
        reply = CurrentReply(now=now, version=version, seq=seq, values=by_ctx)
        await msg.respond(_encoder.encode(reply))

    async def _on_query(self, msg: Message) -> None:
        try:
            req = _query_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            await msg.respond(_encoder.encode(QueryReply(error=str(exc), code="refused")))
            return
        assert self._store is not None
        limit = min(req.maxRows or self.settings.query_max_rows, self.settings.query_max_rows)
        cur = await self._in_db(self._store.cursor)
        loop = asyncio.get_running_loop()

        def run() -> QueryReply:
            try:
                return run_query(
                    cur, req.sql, max_rows=limit, timeout_s=self.settings.query_timeout_s
                )
            finally:
                cur.close()

        reply = await loop.run_in_executor(self._queries, run)
        await msg.respond(self._fit(reply))

    def _fit(self, reply: QueryReply) -> bytes:
        """Encode within the server's max payload, dropping rows (``truncated``) if need be."""
        limit = max(self.bus.max_payload - 4096, 1024)
        data = _encoder.encode(reply)
        rows = reply.rows
        while len(data) > limit and rows:
            rows = rows[: len(rows) // 2]
            data = _encoder.encode(msgspec.structs.replace(reply, rows=rows, truncated=True))
        return data
