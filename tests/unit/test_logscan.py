"""The subject test a whole-log read runs for every entry: NATS's own matching rules."""

from __future__ import annotations

import itertools

from shared.bus.memory import subject_matches
from shared.logscan import matcher

PATTERNS = ["ag.evt.chat.*.presence", "ag.evt.collab.*.*.presence", "ag.evt.>", "a.b"]
SUBJECTS = [
    "ag.evt.chat.room1.presence",
    "ag.evt.chat.room1.message",
    "ag.evt.chat.x.y.presence",
    "ag.evt.collab.c.s.presence",
    "ag.evt.collab.c.presence",
    "ag.evt",
    "ag.evt.x",
    "a.b",
    "aXb",
    "a.b.c",
    "ag.evt.chat.room1.presence.more",
]


def test_a_matcher_agrees_with_nats_subject_matching_for_any_set_of_patterns() -> None:
    for n in range(1, len(PATTERNS) + 1):
        for chosen in itertools.combinations(PATTERNS, n):
            match = matcher(chosen)
            for subject in SUBJECTS:
                want = any(subject_matches(p, subject) for p in chosen)
                assert match(subject) is want, (chosen, subject)
