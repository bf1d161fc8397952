"""Plausible events for the log, shared by the analytics benchmark and the tests."""

from __future__ import annotations

import random
from typing import Any

from shared import subjects

__all__ = ["random_event"]


def random_event(
    rnd: random.Random,
    i: int,
    context: str,
    user: str,
    ts: int,
    max_scores: tuple[int, ...] = (10, 20, 100),
    round_scores: bool = True,
) -> tuple[str, dict[str, Any]]:
    """One plausible event (subject, body): half chat messages, then presence, edits and
    assessments."""
    r = rnd.random()
    base: dict[str, Any] = {"contextId": context, "ts": ts, "userId": user}
    if r < 0.5:
        body = {"type": "chat.message", "messageId": f"m{i}", "seq": i, "userName": user}
        return subjects.chat_messages(context), base | body | {"content": "a course message"}
    if r < 0.7:
        kind = "chat.user_joined" if rnd.random() < 0.55 else "chat.user_left"
        return subjects.chat_presence(context), base | {"type": kind, "userName": user}
    if r < 0.85:
        body = {"type": "collab.edit", "sessionId": "doc-1", "version": i, "userName": user}
        edit = {"operation": "insert", "position": 0, "content": "word "}
        return subjects.collab_edits(context, "doc-1"), base | body | edit
    max_score = rnd.choice(max_scores)
    score = rnd.random() * max_score
    body = {
        "type": "learning.assessment_submitted",
        "assessmentId": f"quiz-{rnd.randrange(5)}",
        "score": round(score, 2) if round_scores else score,
        "maxScore": max_score,
        "completed": rnd.random() < 0.9,
    }
    return subjects.learning(context, "assessment_submitted"), base | body
