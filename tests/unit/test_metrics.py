"""Metric definitions: exact values for scripted event sequences (no NATS, no clock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.analytics import metrics
from services.analytics.projection import Projector
from services.analytics.store import Store
from shared import subjects
from shared.bus.port import Entry
from shared.timefmt import ms_to_ts

NOW = 1_767_605_400_000  # 2026-01-05T09:30:00.000Z, on a minute boundary
W = 900  # seconds
MIN = 60_000


class Log:
    """Builds the event log of a test: entries with seq increasing from 1."""

    def __init__(self) -> None:
        self.items: list[Entry] = []

    def add(self, subject: str, event: dict[str, Any]) -> Log:
        self.items.append(Entry(len(self.items) + 1, subject, json.dumps(event).encode()))
        return self

    def message(self, ctx: str, user: str, ts: int) -> Log:
        n = len(self.items) + 1
        return self.add(
            subjects.chat_messages(ctx),
            {
                "type": "chat.message",
                "contextId": ctx,
                "ts": ts,
                "messageId": f"m{n}",
                "seq": n,
                "userId": user,
                "userName": user.title(),
                "content": "hello",
            },
        )

    def joined(self, ctx: str, user: str, ts: int) -> Log:
        ev = {"type": "chat.user_joined", "contextId": ctx, "ts": ts, "userId": user}
        return self.add(subjects.chat_presence(ctx), {**ev, "userName": user.title()})

    def left(self, ctx: str, user: str, ts: int) -> Log:
        ev = {"type": "chat.user_left", "contextId": ctx, "ts": ts, "userId": user}
        return self.add(subjects.chat_presence(ctx), {**ev, "userName": user.title()})

    def participant(self, ctx: str, session: str, user: str, ts: int, joined: bool = True) -> Log:
        ev: dict[str, Any] = {
            "type": "collab.participant_joined" if joined else "collab.participant_left",
            "contextId": ctx,
            "ts": ts,
            "sessionId": session,
            "userId": user,
            "userName": user.title(),
        }
        if joined:
            ev["role"] = "participant"
        return self.add(subjects.collab_presence(ctx, session), ev)

    def editor(self, ctx: str, user: str, ts: int, connected: bool = True) -> Log:
        """A user's collaboration sockets in the context: the first opened, the last closed."""
        kind = "collab.user_connected" if connected else "collab.user_disconnected"
        ev = {"type": kind, "contextId": ctx, "ts": ts, "userId": user, "userName": user.title()}
        return self.add(subjects.collab_connections(ctx), ev)

    def edit(self, ctx: str, session: str, user: str, ts: int) -> Log:
        ev = {
            "type": "collab.edit",
            "contextId": ctx,
            "ts": ts,
            "sessionId": session,
            "version": len(self.items) + 1,
            "operation": "insert",
            "position": 0,
            "content": "x",
            "userId": user,
            "userName": user.title(),
        }
        return self.add(subjects.collab_edits(ctx, session), ev)

    def snapshot(self, ctx: str, session: str, ts: int) -> Log:
        ev = {
            "type": "collab.snapshot",
            "contextId": ctx,
            "ts": ts,
            "sessionId": session,
            "version": 3,
            "content": "abc",
        }
        return self.add(subjects.collab_snapshots(ctx, session), ev)

    def assessment(self, ctx: str, user: str, ts: int, **fields: Any) -> Log:
        ev = {
            "type": "learning.assessment_submitted",
            "contextId": ctx,
            "ts": ts,
            "userId": user,
            "assessmentId": "quiz-1",
            "score": 1,
            "maxScore": 1,
            **fields,
        }
        ev = {k: v for k, v in ev.items() if v is not None}
        return self.add(subjects.learning(ctx, "assessment_submitted"), ev)


def project(tmp_path: Path, log: Log, batch: int = 1000, name: str = "e.duckdb") -> Store:
    store = Store(tmp_path / name)
    projector = Projector(store)
    for i in range(0, len(log.items), batch):
        projector.apply(log.items[i : i + batch])
    return store


def value(store: Store, metric: str, ctx: str = "c", now: int = NOW, window: int = W) -> Any:
    return metrics.compute(store.con, metric, [ctx], now, window)[ctx]


# --- empty ---------------------------------------------------------------------------------
def test_a_context_without_events_has_zeros_everywhere(tmp_path: Path) -> None:
    store = project(tmp_path, Log().message("other", "u", NOW))
    activity = value(store, "activity", "empty")
    assert {k: v for k, v in activity.items() if k != "perMinute"} == {
        "messages": 0,
        "edits": 0,
        "joins": 0,
        "events": 0,
    }
    assert [m["events"] for m in activity["perMinute"]] == [0] * 16
    assert value(store, "engagement", "empty") == {
        "onlineUsers": 0,
        "activeUsers": 0,
        "messagesPerActiveUser": 0.0,
        "participationRate": 0.0,
    }
    assert value(store, "performance", "empty") == {
        "submissions": 0,
        "averageScore": 0.0,
        "medianScore": 0.0,
        "completionRate": 0.0,
        "byAssessment": [],
    }


def test_an_empty_database_computes_zeros(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    assert value(store, "engagement", "c")["onlineUsers"] == 0
    assert metrics.compute(store.con, "activity", [], NOW, W) == {}


# --- activity ------------------------------------------------------------------------------
def test_window_includes_now_and_excludes_its_start_and_the_future(tmp_path: Path) -> None:
    log = (
        Log()
        .message("c", "a", NOW - W * 1000)  # exactly at the start: outside (now - W, now]
        .message("c", "a", NOW - W * 1000 + 1)  # first millisecond inside
        .message("c", "a", NOW)  # now itself: inside
        .message("c", "a", NOW + 1)  # stamped in the future: not yet
    )
    store = project(tmp_path, log)
    assert value(store, "activity")["messages"] == 2
    # One millisecond later the oldest one has left the window and the future one arrived.
    assert value(store, "activity", now=NOW + 1)["messages"] == 2
    assert value(store, "activity", now=NOW + W * 1000)["messages"] == 1


def test_per_minute_lists_every_minute_of_the_window_oldest_first(tmp_path: Path) -> None:
    now = NOW + 30_000  # 09:30:30
    log = (
        Log()
        .message("c", "a", now - W * 1000 + 1)  # 09:15:30.001: the first, partial, minute
        .message("c", "a", NOW - 5 * MIN + 10)  # 09:25:00.010
        .message("c", "b", NOW - 5 * MIN + 59_999)  # 09:25:59.999
        .joined("c", "b", now)  # 09:30:30: the last, partial, minute
    )
    activity = value(project(tmp_path, log), "activity", now=now)
    per = activity["perMinute"]
    assert len(per) == 16
    assert per[0] == {"minute": "2026-01-05T09:15:00.000Z", "events": 1}
    assert per[10] == {"minute": "2026-01-05T09:25:00.000Z", "events": 2}
    assert per[-1] == {"minute": "2026-01-05T09:30:00.000Z", "events": 1}
    assert [p["minute"] for p in per] == [ms_to_ts(NOW - 15 * MIN + i * MIN) for i in range(16)]
    assert sum(p["events"] for p in per) == activity["events"] == 4


def test_activity_counts_messages_edits_joins_and_all_events_but_snapshots(tmp_path: Path) -> None:
    log = (
        Log()
        .joined("c", "a", NOW - 50)
        .participant("c", "s1", "b", NOW - 40)
        .participant("c", "s1", "b", NOW - 35, joined=False)
        .left("c", "a", NOW - 30)
        .message("c", "a", NOW - 20)
        .message("c", "a", NOW - 19)
        .edit("c", "s1", "b", NOW - 10)
        .snapshot("c", "s1", NOW - 5)
        .assessment("c", "a", NOW - 4)
        .add(  # a type this version does not know yet still counts as an event
            "ag.evt.quiz.c.started", {"type": "quiz.started", "contextId": "c", "ts": NOW - 3}
        )
        .message("elsewhere", "z", NOW)
    )
    activity = value(project(tmp_path, log), "activity")
    assert {k: v for k, v in activity.items() if k != "perMinute"} == {
        "messages": 2,
        "edits": 1,
        "joins": 2,
        "events": 9,
    }


# --- engagement ----------------------------------------------------------------------------
def test_online_users_follow_the_last_presence_event_and_count_once(tmp_path: Path) -> None:
    # The chat service writes one join per user however many gateways hold their sockets
    # (bob on gateway A, carol on gateway B, dave on both), one leave when the last one closes.
    log = (
        Log()
        .joined("c", "bob", NOW - 9000)
        .joined("c", "carol", NOW - 8000)
        .joined("c", "dave", NOW - 7000)
        .left("c", "carol", NOW - 6000)
        .joined("c", "carol", NOW - 5000)  # back again
        .left("c", "dave", NOW - 4000)
        # bob is also in a collaboration session: still one user
        .participant("c", "s1", "bob", NOW - 3000)
        # erin only edits a document (no chat socket)
        .participant("c", "s1", "erin", NOW - 2500)
        .participant("c", "s2", "erin", NOW - 2400)
        .participant("c", "s1", "erin", NOW - 2000, joined=False)  # still in s2
        .participant("c", "s2", "frank", NOW - 1500)
        .participant("c", "s2", "frank", NOW - 1000, joined=False)
    )
    store = project(tmp_path, log)
    assert value(store, "engagement")["onlineUsers"] == 3  # bob, carol, erin
    # `now` while carol was away and dave not yet gone
    assert value(store, "engagement", now=NOW - 5500)["onlineUsers"] == 2  # bob, dave


def test_an_open_editor_counts_online_before_any_session_and_once_with_one(
    tmp_path: Path,
) -> None:
    log = (
        Log()
        .editor("c", "gus", NOW - 9000)  # the editor page is open, no session joined
        .editor("c", "hal", NOW - 8000)
        .participant("c", "s1", "hal", NOW - 7000)  # hal also joins a session: one user
        .joined("c", "hal", NOW - 6500)  # and opens the chat: still one
        .editor("c", "gus", NOW - 6000, connected=False)
        .participant("c", "s1", "hal", NOW - 5000, joined=False)  # left the session, page open
    )
    store = project(tmp_path, log)
    assert value(store, "engagement", now=NOW - 8500)["onlineUsers"] == 1  # gus
    assert value(store, "engagement", now=NOW - 6200)["onlineUsers"] == 2  # gus, hal
    assert value(store, "engagement")["onlineUsers"] == 1  # hal
    assert value(store, "activity")["joins"] == 2  # a socket opening is not a join


def test_active_users_messages_per_user_and_participation(tmp_path: Path) -> None:
    day = 86_400_000
    log = (
        Log()
        .joined("c", "old", NOW - day + 1)  # seen in the last 24 h, not active in the window
        .joined("c", "gone", NOW - day)  # 24 h ago exactly: not seen
        .joined("c", "a", NOW - 60_000)
        .message("c", "a", NOW - 50_000)
        .message("c", "a", NOW - 40_000)
        .edit("c", "s", "b", NOW - 30_000)
        .assessment("c", "learner-only-quiz", NOW - 20_000)  # not an engagement event
    )
    eng = value(project(tmp_path, log), "engagement")
    assert eng == {
        "onlineUsers": 3,  # old, gone and a joined and never left
        "activeUsers": 2,  # a, b
        "messagesPerActiveUser": 1.0,  # 2 messages / 2 users
        "participationRate": 0.6667,  # 2 active / 3 seen (old, a, b)
    }


def test_ratios_round_half_away_from_zero(tmp_path: Path) -> None:
    log = Log()
    for user in ("a", "b", "c"):
        log.joined("c", user, NOW - 1000)
    log.message("c", "a", NOW - 10).message("c", "a", NOW - 9)
    eng = value(project(tmp_path, log), "engagement")
    assert eng["messagesPerActiveUser"] == 0.67
    assert eng["participationRate"] == 1.0


# --- performance ---------------------------------------------------------------------------
def test_performance_scores_are_percent_of_max_score(tmp_path: Path) -> None:
    log = (
        Log()
        .assessment("c", "a", NOW - 5, assessmentId="quiz-2", score=7, maxScore=10)
        .assessment("c", "b", NOW - 4, assessmentId="quiz-1", score=1, maxScore=3, completed=False)
        .assessment("c", "c", NOW - 3, assessmentId="quiz-1", score=2.5, maxScore=5)
        .assessment("c", "d", NOW - 2, assessmentId="quiz-2", score=0, maxScore=4)
        .assessment("other", "e", NOW - 1, score=0, maxScore=1)
        # long ago: performance is not windowed
        .assessment("c", "e", NOW - 10 * 86_400_000, assessmentId="quiz-0", score=9, maxScore=9)
    )
    perf = value(project(tmp_path, log), "performance")
    # percents 70, 33.3333.., 50, 0, 100 -> mean 50.6667, median 50
    assert perf == {
        "submissions": 5,
        "averageScore": 50.67,
        "medianScore": 50.0,
        "completionRate": 0.8,
        "byAssessment": [
            {"assessmentId": "quiz-0", "submissions": 1, "averageScore": 100.0},
            {"assessmentId": "quiz-1", "submissions": 2, "averageScore": 41.67},
            {"assessmentId": "quiz-2", "submissions": 2, "averageScore": 35.0},
        ],
    }


def test_median_of_an_even_count_is_the_mean_of_the_middle_two(tmp_path: Path) -> None:
    log = Log()
    for score in (10, 20, 30, 45):
        log.assessment("c", f"u{score}", NOW - 1, score=score, maxScore=100)
    perf = value(project(tmp_path, log), "performance")
    assert perf["medianScore"] == 25.0
    assert perf["averageScore"] == 26.25


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"score": None}, "missing required field `score`"),
        ({"maxScore": None}, "missing required field `maxScore`"),
        ({"score": 11, "maxScore": 10}, "score exceeds maxScore"),
        ({"score": -1}, "Expected `float` >= 0"),
        ({"maxScore": 0, "score": 0}, "Expected `float` > 0"),
        ({"score": "5"}, "Expected `float`, got `str`"),
        ({"completed": 1}, "Expected `bool`, got `int`"),
        ({"assessmentId": ""}, "length >= 1"),
    ],
)
def test_assessments_with_missing_or_invalid_scores_are_refused(
    tmp_path: Path, fields: dict[str, Any], reason: str
) -> None:
    log = Log().assessment("c", "a", NOW - 2, score=5, maxScore=10).assessment("c", "b", NOW - 1)
    bad = dict(json.loads(log.items[-1].data))
    for k, v in fields.items():
        if v is None:
            bad.pop(k, None)
        else:
            bad[k] = v
    log.items[-1] = Entry(2, log.items[-1].subject, json.dumps(bad).encode())
    store = project(tmp_path, log)
    assert value(store, "performance")["submissions"] == 1
    assert value(store, "activity")["events"] == 1
    rows = store.con.execute("SELECT seq, reason FROM invalid_events").fetchall()
    assert len(rows) == 1 and rows[0][0] == 2 and reason in rows[0][1], rows
    assert store.last_seq() == 2  # refused, recorded, and passed


def test_an_assessment_whose_subject_names_another_context_is_refused(tmp_path: Path) -> None:
    log = Log().assessment("c", "a", NOW - 1)
    first = log.items[0]
    log.items[0] = Entry(first.seq, subjects.learning("other", "assessment_submitted"), first.data)
    store = project(tmp_path, log)
    assert value(store, "performance")["submissions"] == 0
    assert store.counts() == (0, 1)


def test_garbage_in_the_log_is_recorded_not_fatal(tmp_path: Path) -> None:
    log = Log()
    log.items = [
        Entry(1, "ag.evt.chat.c.message", b"not json"),
        Entry(2, "ag.evt.chat.c.message", b"[1, 2]"),
        Entry(3, "ag.evt.chat.c.message", b'{"type": "chat.message", "contextId": "c"}'),
        Entry(4, "ag.evt.chat.c.message", b'{"type": "x", "contextId": "c", "ts": 1e30}'),
        Entry(5, "ag.evt.chat.c.message", b'{"type": "chat.message", "contextId": "c", "ts": 5}'),
    ]
    log.message("c", "a", 2**63)  # would overflow BIGINT: refused, not a crash loop
    log.message("", "a", NOW)
    store = project(tmp_path, log.message("c", "a", NOW))
    assert store.counts() == (1, 7)
    assert store.last_seq() == 8


# --- determinism ---------------------------------------------------------------------------
_users = st.sampled_from(["a", "b", "c", "d"])
_contexts = st.sampled_from(["c1", "c2", "c 3/ü"])
_offsets = st.integers(min_value=-2 * 86_400_000, max_value=1000)
_event = st.one_of(
    st.tuples(st.just("message"), _contexts, _users, _offsets),
    st.tuples(st.just("joined"), _contexts, _users, _offsets),
    st.tuples(st.just("left"), _contexts, _users, _offsets),
    st.tuples(st.just("edit"), _contexts, _users, _offsets),
    st.tuples(
        st.just("assessment"),
        _contexts,
        _users,
        _offsets,
        st.floats(min_value=0, max_value=1),
        st.floats(min_value=0.001, max_value=1e6),
        st.booleans(),
    ),
)


def _script(events: list[tuple[Any, ...]]) -> Log:
    log = Log()
    for kind, ctx, user, offset, *rest in events:
        ts = NOW + offset
        if kind == "assessment":
            frac, max_score, done = rest
            log.assessment(
                ctx, user, ts, score=frac * max_score, maxScore=max_score, completed=done
            )
        elif kind == "edit":
            log.edit(ctx, "s", user, ts)
        else:
            getattr(log, kind)(ctx, user, ts)
    return log


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_event, max_size=60), st.integers(min_value=1, max_value=7))
def test_values_do_not_depend_on_how_the_log_was_batched(
    tmp_path_factory: pytest.TempPathFactory, events: list[tuple[Any, ...]], batch: int
) -> None:
    """Live ingest batches events as they come; replay in big batches: same bytes out."""
    tmp = tmp_path_factory.mktemp("det")
    log = _script(events)
    one_by_one = project(tmp, log, batch=batch, name="live.duckdb")
    all_at_once = project(tmp, log, batch=10_000, name="replay.duckdb")
    ctxs = ["c1", "c2", "c 3/ü", "none"]
    live = metrics.compute_all(one_by_one.con, ctxs, NOW, W)
    replay = metrics.compute_all(all_at_once.con, ctxs, NOW, W)
    assert msgspec.json.encode(live) == msgspec.json.encode(replay)
    one_by_one.close()
    all_at_once.close()


def test_upto_seq_computes_as_of_a_stream_position(tmp_path: Path) -> None:
    log = Log().message("c", "a", NOW - 3).message("c", "a", NOW - 2).message("c", "a", NOW - 1)
    store = project(tmp_path, log)
    at_two = metrics.compute(store.con, "activity", ["c"], NOW, W, upto_seq=2)["c"]
    assert at_two["messages"] == 2
    assert metrics.all_contexts(store.con, upto_seq=0) == []
