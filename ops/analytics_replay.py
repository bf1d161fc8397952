"""Rebuilding the analytics projection from the event log, and checking it against the live one.

Used by ``atomic-guide replay`` and ``export``, and by the benchmarks. The rebuild goes through
the aggregator's own ``Projector`` (same decoding, same bulk append, same checkpoint), reading the
log with an ephemeral unacked consumer from sequence 1 up to the log's last sequence at the start.
DuckDB appends run on a worker thread while the next batch is fetched.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec

from services.analytics import metrics
from services.analytics.projection import Projector
from services.analytics.store import Store
from shared import subjects
from shared.bus.nats import NatsBus, connect_once
from shared.bus.port import Bus, Unavailable
from shared.config import load_settings
from shared.schemas.analytics import CurrentReply, CurrentRequest, QueryReply, QueryRequest
from shared.schemas.wire import encode

__all__ = [
    "Progress",
    "Rebuilt",
    "Verdict",
    "rebuild",
    "verify",
    "live_via_rpc",
    "live_via_file",
    "LiveView",
]

_current_decoder = msgspec.json.Decoder(CurrentReply)
_query_decoder = msgspec.json.Decoder(QueryReply)


class Progress:
    """A plain progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, total: int, label: str = "replay", out: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0
        self._decile = -1
        self._printed = -1

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        frac = min(done / self.total, 1.0)
        if self.tty:
            if not final and now - self._drawn < 0.2:
                return
            self._drawn = now
            self.out.write("\r" + self._line(done, frac, now))
            if final:
                self.out.write("\n")
        else:
            decile = int(frac * 10)
            if decile == self._decile and (not final or done == self._printed):
                return
            self._decile = decile
            self._printed = done
            self.out.write(self._line(done, frac, now) + "\n")
        self.out.flush()

    def _line(self, done: int, frac: float, now: float) -> str:
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 and done < self.total else 0.0
        return (
            f"[{self.label}] [{bar}] {frac * 100:5.1f}% {done:,}/{self.total:,} events "
            f"{rate:,.0f} ev/s ETA {eta:,.0f}s"
        )


@dataclass
class Rebuilt:
    path: Path
    messages: int  # messages read from the log
    last_seq: int  # last stream sequence applied
    stored: int = 0
    invalid: int = 0
    seconds: float = 0.0


async def rebuild(
    bus: Bus,
    path: Path,
    *,
    batch: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
) -> Rebuilt:
    """Project the log from its first message to its last (as of now) into a new file, with
    the aggregator's own code path (``Projector``): the next batch is read and prepared while
    DuckDB commits the previous one."""
    if path.exists():
        raise FileExistsError(f"{path} exists; a replay writes a fresh file")
    target = await bus.log_end()
    started = time.perf_counter()
    pool = ThreadPoolExecutor(1, thread_name_prefix="replay-duckdb")
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(pool, Store, path)
    tail = bus.tail(subjects.EVENTS_ALL, 1)
    try:
        projector = await loop.run_in_executor(pool, Projector, store)
        out = Rebuilt(path, 0, 0)
        pending: asyncio.Future[Any] | None = None
        if progress is not None:
            progress(0, target)
        while out.last_seq < target:
            entries = await tail.fetch(batch, timeout=5.0)
            if not entries:
                if await tail.pending() == 0:
                    break  # the end was deleted: nothing more up to the target
                continue
            items = [e for e in entries if e.seq <= target] if entries[-1].seq > target else entries
            if not items:
                break
            prepared = projector.prepare(items)  # here, while DuckDB writes the previous batch
            if pending is not None:
                await pending  # at most one batch in DuckDB's hands while the next is read
            pending = loop.run_in_executor(pool, projector.commit, prepared)
            out.messages += len(items)
            out.last_seq = items[-1].seq
            if progress is not None:
                progress(out.last_seq, target)
        if pending is not None:
            await pending
        out.stored, out.invalid = await loop.run_in_executor(pool, store.counts)
        out.seconds = time.perf_counter() - started
        return out
    finally:
        await tail.close()
        await loop.run_in_executor(pool, store.close)
        pool.shutdown()


# --- comparing with the live projection -------------------------------------------------------
@dataclass
class LiveView:
    """What the live projection says at one stream position (``upto``) and one ``now``."""

    source: str  # "aggregator" (over NATS) or the path of the live file
    seq: int  # its checkpoint
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    contexts: list[str] | None = None  # None when not known (too many for one query reply)
    counts: tuple[int, int, int] | None = None  # (rows, distinct seqs, invalid) up to `upto`


@dataclass
class Verdict:
    ok: bool
    problems: list[str]
    compared_contexts: int = 0
    upto: int = 0
    live_source: str | None = None


async def live_seq_via_rpc(bus: Bus, timeout: float = 5.0) -> int | None:
    """The running aggregator's checkpoint, or None if no aggregator answers."""
    req = CurrentRequest(contextIds=["__probe__"], metrics=["performance"])
    try:
        raw = await bus.request(subjects.RPC_METRICS_CURRENT, encode(req), timeout=timeout)
    except Unavailable:
        return None
    reply = _current_decoder.decode(raw)
    return None if reply.error else reply.seq


async def live_via_rpc(
    bus: Bus, contexts: list[str], now: int, upto: int, timeout: float = 30.0
) -> LiveView:
    values: dict[str, dict[str, Any]] = {}
    seq = 0
    for i in range(0, len(contexts), 200):
        req = CurrentRequest(contextIds=contexts[i : i + 200], now=now, uptoSeq=upto)
        raw = await bus.request(subjects.RPC_METRICS_CURRENT, encode(req), timeout=timeout)
        reply = _current_decoder.decode(raw)
        if reply.error:
            raise RuntimeError(f"aggregator: {reply.error}")
        values.update(reply.values)
        seq = reply.seq
    view = LiveView("aggregator", seq, values)
    q = await _rpc_query(
        bus,
        f"SELECT (SELECT count(*) FROM events WHERE seq <= {upto}), "
        f"(SELECT count(DISTINCT seq) FROM events WHERE seq <= {upto}), "
        f"(SELECT count(*) FROM invalid_events WHERE seq <= {upto})",
        timeout,
    )
    if q.rows:
        r = q.rows[0]
        view.counts = (int(r[0]), int(r[1]), int(r[2]))
    q = await _rpc_query(
        bus, f"SELECT DISTINCT context_id FROM events WHERE seq <= {upto} ORDER BY 1", timeout
    )
    if not q.error and not q.truncated:
        view.contexts = [r[0] for r in q.rows]
    return view


async def _rpc_query(bus: Bus, sql: str, timeout: float) -> QueryReply:
    raw = await bus.request(
        subjects.RPC_ANALYTICS_QUERY, encode(QueryRequest(sql=sql)), timeout=timeout
    )
    reply: QueryReply = _query_decoder.decode(raw)
    return reply


def live_via_file(
    path: Path, contexts: list[str], now: int, upto: int | None, window_s: int
) -> LiveView:
    """Open the live file read-only (only possible while no aggregator holds it)."""
    store = Store(path, read_only=True)
    try:
        seq = store.last_seq()
        at = seq if upto is None else min(seq, upto)
        cur = store.con
        view = LiveView(str(path), seq)
        view.values = metrics.compute_all(cur, contexts, now, window_s, upto_seq=at)
        view.contexts = metrics.all_contexts(cur, at)
        row = cur.execute(
            "SELECT (SELECT count(*) FROM events WHERE seq <= $s), "
            "(SELECT count(DISTINCT seq) FROM events WHERE seq <= $s), "
            "(SELECT count(*) FROM invalid_events WHERE seq <= $s)",
            {"s": at},
        ).fetchone()
        assert row is not None
        view.counts = (int(row[0]), int(row[1]), int(row[2]))
        return view
    finally:
        store.close()


def verify(
    rebuilt: Rebuilt,
    store: Store,
    live: LiveView | None,
    now: int,
    window_s: int,
    upto: int,
) -> Verdict:
    """Row counts against the log, then metric values against the live projection at ``upto``."""
    problems: list[str] = []
    valid, invalid = store.counts()
    if valid + invalid != rebuilt.messages:
        problems.append(
            f"rows {valid} + invalid {invalid} != {rebuilt.messages} events read from the log"
        )
    if store.last_seq() != rebuilt.last_seq:
        problems.append(f"checkpoint {store.last_seq()} != last sequence {rebuilt.last_seq}")
    row = store.con.execute("SELECT count(*) - count(DISTINCT seq) FROM events").fetchone()
    if row and row[0]:
        problems.append(f"{row[0]} duplicate sequences in the rebuilt projection")
    verdict = Verdict(ok=True, problems=problems, upto=upto)
    if live is not None:
        verdict.live_source = live.source
        contexts = metrics.all_contexts(store.con, upto)
        mine = metrics.compute_all(store.con, contexts, now, window_s, upto_seq=upto)
        # Compare what travels on the wire: JSON (the live values came through it).
        mine = msgspec.json.decode(msgspec.json.encode(mine))
        if live.contexts is not None and live.contexts != contexts:
            extra = sorted(set(live.contexts) ^ set(contexts))[:5]
            problems.append(f"context sets differ (e.g. {extra})")
        if live.counts is not None:
            row = store.con.execute(
                "SELECT (SELECT count(*) FROM events WHERE seq <= $s), "
                "(SELECT count(*) FROM invalid_events WHERE seq <= $s)",
                {"s": upto},
            ).fetchone()
            assert row is not None
            rows, distinct, bad = live.counts
            if rows != distinct:
                problems.append(f"live projection has {rows - distinct} duplicate sequences")
            if (rows, bad) != (int(row[0]), int(row[1])):
                problems.append(
                    f"live has {rows} events + {bad} invalid up to seq {upto}, "
                    f"replay has {row[0]} + {row[1]}"
                )
        for ctx in contexts:
            if live.values.get(ctx) != mine.get(ctx):
                problems.append(f"metrics differ for context {ctx!r}")
        verdict.compared_contexts = len(contexts)
    verdict.ok = not problems
    return verdict


async def connect_cli(url: str) -> NatsBus:
    """A bus for a command-line tool: one bounded connection attempt, no reconnects."""
    return NatsBus(load_settings({}), await connect_once(url, "atomic-guide-cli"))
