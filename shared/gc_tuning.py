"""Garbage-collector settings for the long-running service processes.

CPython's defaults suit short scripts: a young collection every 700 net allocations, and a full
collection each time the old generation has grown by a quarter. A gateway opening thousands of
sockets grows its old generation all the time, so full collections kept walking every object it
holds (the imported libraries included): py-spy put 10-15% of the gateway's CPU in the
collector while sockets opened. Two changes:

- ``tune`` (at process start): young collections every 10,000 allocations, so objects of a
  socket's set-up (request, handshake, token) are mostly freed by reference counting before a
  collection ever looks at them, and the full collections come ten times less often.
- ``settle`` (once started): collect, then ``gc.freeze`` what is left (modules, the app, its
  settings) so no later collection walks it again. It is never garbage: it lives as long as the
  process.

Reference cycles are still collected, only later; the memory that costs is bounded by the
threshold (10,000 objects).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle", "tune"]

YOUNG_THRESHOLD = 10_000


def tune() -> None:
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def settle() -> None:
    gc.collect()
    gc.freeze()
