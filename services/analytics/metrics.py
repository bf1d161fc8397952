"""The metric definitions: SQL over the ``events`` table, and nothing else (sans-I/O).

Every function takes a DuckDB cursor, the contexts, and ``now_ms``: the clock is never read here,
so the live aggregator, ``atomic-guide replay`` and the tests compute bit-identical values from the
same events at the same ``now``. ``upto_seq`` restricts a computation to the log up to a stream
sequence (replay verification compares two projections at one position).

Definitions (docs/protocol.md, "Analytics"); W = ``AG_METRICS_WINDOW_S``:

- The window holds events with ``now - W < ts <= now``. Events stamped after ``now`` count nowhere
  yet. ``collab.snapshot`` events are bookkeeping, not activity, and count nowhere.
- ``activity``: ``messages`` (chat.message), ``edits`` (collab.edit), ``joins``
  (chat.user_joined + collab.participant_joined) and ``events`` (all) in the window.
  ``perMinute``: one ``{minute, events}`` per calendar minute (UTC) from the minute holding
  ``now - W`` to the minute holding ``now``, oldest first, empty minutes included; so W/60 + 1
  entries (16 for 900 s), the first and last partial, and their sum equals ``events``.
- ``engagement``: ``onlineUsers``: users whose last presence event (by stream order) in the chat
  room, in any collaboration session, or of their collaboration sockets in the context (open
  before any session is joined: ``collab.user_connected``) says joined; a user counts once.
  ``activeUsers``: distinct users with a chat, presence or edit event in the window.
  ``messagesPerActiveUser``: messages in the window / activeUsers. ``participationRate``:
  activeUsers / distinct users with such an event in the last max(24 h, W).
- ``performance`` (all ``learning.assessment_submitted`` events, not windowed): ``submissions``,
  ``averageScore`` and ``medianScore`` (percent of ``maxScore``; the median of an even count is
  the mean of the middle two), ``completionRate`` (completed / submissions), ``byAssessment``
  (ordered by ``assessmentId``).

Rounding, so values are deterministic and comparable: percents and per-user values to 2
decimals, 0..1 rates to 4 decimals, half away from zero. Each percent is fixed to 6 decimals
(DECIMAL) before it is summed, so sums are exact and do not depend on DuckDB's parallel
summation order. With no data every number is 0 and lists are empty (``perMinute`` still lists
its minutes, each with 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from shared.schemas.analytics import METRICS
from shared.timefmt import ms_to_ts

__all__ = ["METRICS", "compute", "compute_all", "active_contexts", "all_contexts", "MAX_SEQ"]

MAX_SEQ = 2**63 - 1
DAY_MS = 86_400_000
MINUTE_MS = 60_000

_CTX = "ctx AS (SELECT DISTINCT unnest($contexts::VARCHAR[]) AS context_id)"

ACTIVITY_SQL = f"""
WITH {_CTX},
win AS (
    SELECT e.context_id, e.type, e.ts
    FROM events e JOIN ctx USING (context_id)
    WHERE e.ts > $now - $window AND e.ts <= $now AND e.seq <= $upto
      AND e.type <> 'collab.snapshot'
),
totals AS (
    SELECT context_id,
           count(*) FILTER (WHERE type = 'chat.message') AS messages,
           count(*) FILTER (WHERE type = 'collab.edit') AS edits,
           count(*) FILTER (
               WHERE type IN ('chat.user_joined', 'collab.participant_joined')) AS joins,
           count(*) AS events
    FROM win GROUP BY context_id
),
minutes AS (
    SELECT ctx.context_id, r.range AS minute
    FROM ctx CROSS JOIN range(
        CAST(floor(($now - $window) / {MINUTE_MS}) AS BIGINT) * {MINUTE_MS},
        CAST(floor($now / {MINUTE_MS}) AS BIGINT) * {MINUTE_MS} + 1,
        {MINUTE_MS}) r
),
per_minute AS (
    SELECT context_id, CAST(floor(ts / {MINUTE_MS}) AS BIGINT) * {MINUTE_MS} AS minute,
           count(*) AS events
    FROM win GROUP BY ALL
),
series AS (
    SELECT m.context_id,
           list(m.minute ORDER BY m.minute) AS minutes,
           list(coalesce(p.events, 0) ORDER BY m.minute) AS counts
    FROM minutes m LEFT JOIN per_minute p USING (context_id, minute)
    GROUP BY m.context_id
)
SELECT ctx.context_id,
       coalesce(t.messages, 0), coalesce(t.edits, 0), coalesce(t.joins, 0),
       coalesce(t.events, 0), s.minutes, s.counts
FROM ctx LEFT JOIN totals t USING (context_id) LEFT JOIN series s USING (context_id)
"""

ENGAGEMENT_SQL = f"""
WITH {_CTX},
ev AS (
    SELECT e.context_id, e.seq, e.ts, e.type, e.user_id, e.session_id
    FROM events e JOIN ctx USING (context_id)
    WHERE e.ts <= $now AND e.seq <= $upto AND e.user_id IS NOT NULL
      AND e.type IN ('chat.message', 'chat.user_joined', 'chat.user_left',
                     'collab.edit', 'collab.participant_joined', 'collab.participant_left',
                     'collab.user_connected', 'collab.user_disconnected')
),
presence AS (
    -- the last presence event of each user in the chat room, in each collaboration session,
    -- and of their collaboration sockets in the context (in a session or not)
    SELECT context_id, user_id, arg_max(type, seq) AS last
    FROM ev
    WHERE type IN ('chat.user_joined', 'chat.user_left',
                   'collab.participant_joined', 'collab.participant_left',
                   'collab.user_connected', 'collab.user_disconnected')
    GROUP BY context_id, user_id, starts_with(type, 'chat.'),
             type IN ('collab.user_connected', 'collab.user_disconnected'), session_id
),
online AS (
    SELECT context_id, count(DISTINCT user_id) AS users
    FROM presence
    WHERE last IN ('chat.user_joined', 'collab.participant_joined', 'collab.user_connected')
    GROUP BY context_id
),
recent AS (
    SELECT context_id,
           count(DISTINCT user_id) FILTER (WHERE ts > $now - $window) AS active,
           count(*) FILTER (WHERE ts > $now - $window AND type = 'chat.message') AS messages,
           count(DISTINCT user_id) AS seen
    FROM ev WHERE ts > $now - $horizon
    GROUP BY context_id
)
SELECT ctx.context_id,
       coalesce(o.users, 0),
       coalesce(r.active, 0),
       CASE WHEN coalesce(r.active, 0) = 0 THEN 0.0
            ELSE round(r.messages / r.active, 2) END,
       CASE WHEN coalesce(r.seen, 0) = 0 THEN 0.0
            ELSE round(r.active / r.seen, 4) END
FROM ctx LEFT JOIN online o USING (context_id) LEFT JOIN recent r USING (context_id)
"""

PERFORMANCE_SQL = f"""
WITH {_CTX},
sub AS (
    SELECT e.context_id, e.assessment_id, e.completed,
           CAST(e.score / e.max_score * 100 AS DECIMAL(18, 6)) AS pct
    FROM events e JOIN ctx USING (context_id)
    WHERE e.type = 'learning.assessment_submitted' AND e.ts <= $now AND e.seq <= $upto
),
totals AS (
    SELECT context_id,
           count(*) AS submissions,
           round(avg(pct), 2) AS average,
           CAST(round(median(pct), 2) AS DOUBLE) AS median,
           round(count(*) FILTER (WHERE completed) / count(*), 4) AS completion
    FROM sub GROUP BY context_id
),
per AS (
    SELECT context_id, assessment_id, count(*) AS submissions, round(avg(pct), 2) AS average
    FROM sub GROUP BY context_id, assessment_id
),
by_assessment AS (
    SELECT context_id,
           list({{'assessmentId': assessment_id, 'submissions': submissions,
                  'averageScore': average}} ORDER BY assessment_id) AS items
    FROM per GROUP BY context_id
)
SELECT ctx.context_id,
       coalesce(t.submissions, 0), coalesce(t.average, 0.0), coalesce(t.median, 0.0),
       coalesce(t.completion, 0.0), b.items
FROM ctx LEFT JOIN totals t USING (context_id) LEFT JOIN by_assessment b USING (context_id)
"""


def _used(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """DuckDB refuses named parameters a statement does not use."""
    return {k: v for k, v in params.items() if f"${k}" in sql}


def _params(
    contexts: Sequence[str], now_ms: int, window_s: int, upto_seq: int | None
) -> dict[str, Any]:
    return {
        "contexts": list(contexts),
        "now": now_ms,
        "window": window_s * 1000,
        "upto": MAX_SEQ if upto_seq is None else upto_seq,
    }


def _activity(cur: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for ctx, messages, edits, joins, events, minutes, counts in cur.execute(
        ACTIVITY_SQL, _used(ACTIVITY_SQL, p)
    ).fetchall():
        out[ctx] = {
            "messages": messages,
            "edits": edits,
            "joins": joins,
            "events": events,
            "perMinute": [
                {"minute": ms_to_ts(m), "events": n} for m, n in zip(minutes, counts, strict=True)
            ],
        }
    return out


def _engagement(cur: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    p = {**p, "horizon": max(DAY_MS, p["window"])}
    out = {}
    for ctx, online, active, per_user, rate in cur.execute(
        ENGAGEMENT_SQL, _used(ENGAGEMENT_SQL, p)
    ).fetchall():
        out[ctx] = {
            "onlineUsers": online,
            "activeUsers": active,
            "messagesPerActiveUser": float(per_user),
            "participationRate": float(rate),
        }
    return out


def _performance(cur: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for ctx, n, average, median, completion, items in cur.execute(
        PERFORMANCE_SQL, _used(PERFORMANCE_SQL, p)
    ).fetchall():
        out[ctx] = {
            "submissions": n,
            "averageScore": float(average),
            "medianScore": float(median),
            "completionRate": float(completion),
            "byAssessment": [
                {
                    "assessmentId": i["assessmentId"],
                    "submissions": i["submissions"],
                    "averageScore": float(i["averageScore"]),
                }
                for i in items or ()
            ],
        }
    return out


_COMPUTE = {"activity": _activity, "engagement": _engagement, "performance": _performance}


def compute(
    cur: duckdb.DuckDBPyConnection,
    metric: str,
    contexts: Sequence[str],
    now_ms: int,
    window_s: int,
    upto_seq: int | None = None,
) -> dict[str, dict[str, Any]]:
    """One metric's value for each of ``contexts`` (context -> value)."""
    if not contexts:
        return {}
    return _COMPUTE[metric](cur, _params(contexts, now_ms, window_s, upto_seq))


def compute_all(
    cur: duckdb.DuckDBPyConnection,
    contexts: Sequence[str],
    now_ms: int,
    window_s: int,
    metrics: Sequence[str] = METRICS,
    upto_seq: int | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Context -> metric -> value, for every pair."""
    out: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in contexts}
    for metric in metrics:
        for ctx, value in compute(cur, metric, contexts, now_ms, window_s, upto_seq).items():
            out[ctx][metric] = value
    return out


def active_contexts(cur: duckdb.DuckDBPyConnection, since_ms: int, now_ms: int) -> list[str]:
    """Contexts with an event stamped in ``(since_ms, now_ms]`` (the periodic recompute set)."""
    rows = cur.execute(
        "SELECT DISTINCT context_id FROM events WHERE ts > ? AND ts <= ? ORDER BY 1",
        [since_ms, now_ms],
    ).fetchall()
    return [r[0] for r in rows]


def all_contexts(cur: duckdb.DuckDBPyConnection, upto_seq: int | None = None) -> list[str]:
    rows = cur.execute(
        "SELECT DISTINCT context_id FROM events WHERE seq <= ? ORDER BY 1",
        [MAX_SEQ if upto_seq is None else upto_seq],
    ).fetchall()
    return [r[0] for r in rows]
