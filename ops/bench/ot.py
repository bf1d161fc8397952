"""Throughput of the OT core: ``Document.submit`` (transform + validate + apply) per second.

The document holds about 10 KB of text with some emoji; every edit is made on a version up to
eight behind the current one, so most are transformed against a few operations first. Only the
``submit`` calls are timed, not the generation of the edits.

    python -m ops.bench.ot [n_ops] [seed]
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque

from services.collaboration.document import Document
from services.collaboration.ot import Delete, Insert, Op, apply
from services.collaboration.utf16 import index_to_utf16, utf16_slice

__all__ = ["run"]

_TARGET_BYTES = 10_000
_MAX_LAG = 8
_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "😀", "naïve", "中文", "👍🏽", "\n"]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _edit(rng: random.Random, text: str) -> tuple[Op, str | None]:
    i = rng.randrange(len(text) + 1)
    if len(text.encode()) < _TARGET_BYTES or rng.random() < 0.3:  # hover around the target
        return Insert(index_to_utf16(text, i), _words(rng, rng.randint(1, 3))), None
    j = min(len(text), i + rng.randint(1, 12))
    start, end = index_to_utf16(text, i), index_to_utf16(text, j)
    content = utf16_slice(text, start, end) if rng.random() < 0.5 else None
    return Delete(start, end - start), content


def run(n_ops: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Submit ``n_ops`` edits made on slightly stale versions; return the timing."""
    rng = random.Random(seed)
    initial = _words(rng, 1_400)
    doc = Document(initial)
    recent: deque[str] = deque([initial], maxlen=_MAX_LAG + 1)  # text at the last few versions
    seconds = 0.0
    for _ in range(n_ops):
        lag = rng.randint(0, len(recent) - 1)
        base = doc.version - lag
        op, content = _edit(rng, recent[-1 - lag])
        started = time.perf_counter()
        applied = doc.submit(op, base, content)
        seconds += time.perf_counter() - started
        for done, _version in applied:  # the text at each new version, split parts included
            recent.append(apply(recent[-1], done))
    return {"ops": n_ops, "seconds": seconds, "ops_per_s": n_ops / seconds if seconds else 0.0}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(run(*args))
