"""The DuckDB projection end to end: ad-hoc query, crash safety, replay, export, consumer
recovery (the ``atomic-guide`` commands run as subprocesses)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import urllib.request
from collections.abc import Callable
from typing import Any

import duckdb
import msgspec
import pytest
from nats.aio.client import Client as NATS

from ops.sim.events import random_event
from shared import subjects
from shared.timefmt import now_ms
from tests.helpers import Stack, free_port
from tests.integration.analytics_support import (
    caught_up,
    cli,
    ctx,
    rpc_current,
    rpc_query,
    start_analytics,
    stored,
)

pytestmark = pytest.mark.integration


async def test_query_runs_on_the_aggregator_refuses_writes_and_falls_back_to_the_file(
    astack: Stack, nc: NATS
) -> None:
    c = ctx()
    js = nc.jetstream()
    for i in range(3):
        ev = {"type": "chat.user_joined", "contextId": c, "ts": now_ms(), "userId": f"u{i}"}
        await js.publish(subjects.chat_presence(c), json.dumps({**ev, "userName": "U"}).encode())
    await caught_up(nc, astack)
    sql = f"SELECT user_id, type FROM events WHERE context_id = '{c}' ORDER BY seq"
    out = await asyncio.to_thread(cli, astack, "query", sql, "--json")
    assert out.returncode == 0, out.stderr
    assert [r["user_id"] for r in json.loads(out.stdout)] == ["u0", "u1", "u2"]
    out = await asyncio.to_thread(cli, astack, "query", sql, "--csv")
    assert out.stdout.splitlines()[:2] == ["user_id,type", "u0,chat.user_joined"]
    out = await asyncio.to_thread(cli, astack, "query", sql)
    assert "u2" in out.stdout and "(3 rows)" in out.stdout
    for write in ("DELETE FROM events", "SELECT 1; DROP TABLE events", "COPY events TO 'x.csv'"):
        out = await asyncio.to_thread(cli, astack, "query", write)
        assert out.returncode == 2 and "refused" in out.stderr, out.stderr
    # Without the aggregator the CLI opens the file read-only itself.
    assert astack.services["analytics"].stop() == 0
    out = await asyncio.to_thread(
        cli, astack, "query", f"SELECT count(*) AS n FROM ({sql})", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 3}]
    out = await asyncio.to_thread(cli, astack, "query", "DELETE FROM events")
    assert out.returncode == 2


async def _traffic(nc: NATS, contexts: list[str], n: int, seed: int = 7) -> None:
    """n random events over several contexts in the last 2 h, straight into the log (core
    publishes). Unrounded scores over odd maxima make exact summation matter for replay."""
    rnd = random.Random(seed)
    now = now_ms()
    for i in range(n):
        context, user = rnd.choice(contexts), f"u{rnd.randrange(6)}"
        ts = now - rnd.randrange(0, 2 * 3600_000)
        subject, ev = random_event(
            rnd, i, context, user, ts, max_scores=(1, 3, 7, 10, 100), round_scores=False
        )
        await nc.publish(subject, json.dumps(ev).encode())
    await nc.flush()


async def test_killed_mid_batch_the_aggregator_loses_and_doubles_nothing(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(
        chat=False, gateways=0, env={"AG_ANALYTICS_BATCH": "200", "AG_LOG_LEVEL": "info"}
    )
    js = nc.jetstream()
    contexts = [ctx() for _ in range(3)]
    await start_analytics(stack, nc)
    rnd = random.Random(3)
    for round_ in range(4):
        await _traffic(nc, contexts, 4000, seed=round_)
        await stored(nc, 4000 * (round_ + 1))
        # Let it get going, then kill it without warning (no chance to commit or ack).
        await asyncio.sleep(rnd.uniform(0.05, 0.4))  # a random moment to crash at
        assert stack.services["analytics"].stop(signal.SIGKILL) == -signal.SIGKILL
        await start_analytics(stack, nc)
    last = await caught_up(nc, stack, timeout=60)
    info = await js.stream_info(subjects.EVENTS_STREAM)
    assert last == info.state.last_seq
    counts = await rpc_query(
        nc, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM events"
    )
    assert counts.rows == [[info.state.messages, info.state.messages, 1, last]]
    invalid = await rpc_query(nc, "SELECT count(*) FROM invalid_events")
    assert invalid.rows == [[0]]


async def test_replay_rebuilds_bit_identical_values_and_swaps_only_when_stopped(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(chat=False, gateways=0)
    contexts = [ctx() for _ in range(4)]
    await start_analytics(stack, nc)
    await _traffic(nc, contexts, 3000)
    await nc.publish(subjects.chat_messages(contexts[0]), b"{broken")
    await stored(nc, 3001)
    await caught_up(nc, stack)
    fixed_now = now_ms()
    before = {c: (await rpc_current(nc, c, now=fixed_now)).values[c] for c in contexts}

    out = await asyncio.to_thread(cli, stack, "replay")
    assert out.returncode == 0, out.stderr
    assert "verified" in out.stderr and "compared 4 contexts with aggregator" in out.stderr
    assert "not swapped in" in out.stdout
    assert "3,001 events (3,000 stored, 1 invalid)" in out.stderr
    assert "100.0%" in out.stderr  # the progress bar finished

    live = stack.tmp / "analytics" / "events.duckdb"
    assert stack.services["analytics"].stop() == 0
    out = await asyncio.to_thread(cli, stack, "replay")
    assert out.returncode == 0, out.stderr
    assert f"compared 4 contexts with {live}" in out.stderr
    assert "swapped in" in out.stdout
    assert list((stack.tmp / "analytics").glob("events-*.bak.duckdb"))

    await start_analytics(stack, nc)  # resumes from the rebuilt file's checkpoint
    after = {c: (await rpc_current(nc, c, now=fixed_now)).values[c] for c in contexts}
    assert msgspec.json.encode(after) == msgspec.json.encode(before)
    await _traffic(nc, contexts, 10, seed=99)
    await stored(nc, 3011)
    await caught_up(nc, stack)
    counts = await rpc_query(nc, "SELECT count(*), count(DISTINCT seq) FROM events")
    assert counts.rows == [[3010, 3010]]


async def test_export_writes_partitioned_parquet(
    make_stack: Callable[..., Any], nc: NATS, tmp_path: Any
) -> None:
    stack: Stack = await make_stack(chat=False, gateways=0)
    contexts = [ctx() for _ in range(2)]
    await start_analytics(stack, nc)
    await _traffic(nc, contexts, 500)
    await stored(nc, 500)
    await caught_up(nc, stack)
    running = tmp_path / "pq-running"
    out = await asyncio.to_thread(cli, stack, "export", "--parquet", str(running))
    assert out.returncode == 0, out.stderr
    assert "rebuilt from the log" in out.stderr
    stack.services["analytics"].stop()
    stopped = tmp_path / "pq-stopped"
    out = await asyncio.to_thread(cli, stack, "export", "--parquet", str(stopped))
    assert out.returncode == 0, out.stderr
    for target in (running, stopped):
        types = {p.name for p in target.iterdir()}
        assert "type=chat.message" in types and "type=learning.assessment_submitted" in types
        rows = duckdb.sql(
            f"SELECT count(*), count(DISTINCT seq) FROM read_parquet('{target}/**/*.parquet')"
        ).fetchall()
        assert rows == [(500, 500)]
    out = await asyncio.to_thread(cli, stack, "export", "--parquet", str(stopped))
    assert out.returncode == 1 and "not empty" in out.stderr


async def test_a_deleted_consumer_is_re_created_from_the_checkpoint(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(chat=False, gateways=0)
    await start_analytics(stack, nc)
    contexts = [ctx()]
    await _traffic(nc, contexts, 100)
    await stored(nc, 100)
    await caught_up(nc, stack)
    js = nc.jetstream()
    tails = [c.name for c in await js.consumers_info(subjects.EVENTS_STREAM)]
    assert tails, "the aggregator reads the log through a consumer"
    for name in tails:  # what an operator's mistake or a lost NATS memory store does
        await js.delete_consumer(subjects.EVENTS_STREAM, name)
    await _traffic(nc, contexts, 50, seed=5)
    await stored(nc, 150)
    assert await caught_up(nc, stack) == 150
    counts = await rpc_query(nc, "SELECT count(*), count(DISTINCT seq) FROM events")
    assert counts.rows == [[150, 150]]


async def test_while_events_keep_coming_live_commits_are_spaced_and_nothing_is_lost(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    """A DuckDB transaction costs ~3 ms of CPU whatever its size: a steady trickle of events
    (one every 20 ms) gets commits AG_ANALYTICS_COMMIT_INTERVAL_MS apart, not one per linger."""
    port = free_port()
    env = {"AG_ANALYTICS_COMMIT_INTERVAL_MS": "400", "AG_METRICS_PORT": str(port)}
    stack: Stack = await make_stack(env=env, chat=False)
    await start_analytics(stack, nc)

    def commits() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        line = next(
            x for x in text.splitlines() if x.startswith("ag_analytics_batch_seconds_count")
        )
        return float(line.split()[-1])

    before = commits()
    contexts = [ctx()]
    started = asyncio.get_running_loop().time()
    for i in range(60):
        if i:
            await asyncio.sleep(0.02)  # the traffic's pace, not synchronisation
        await _traffic(nc, contexts, 1, seed=i)
    await stored(nc, 60)
    await caught_up(nc, stack)
    elapsed = asyncio.get_running_loop().time() - started
    made = commits() - before
    assert made <= elapsed / 0.4 + 2, (made, elapsed)  # one per linger would be ~40
    assert (await rpc_query(nc, "SELECT count(*) FROM events")).rows == [[60]]
