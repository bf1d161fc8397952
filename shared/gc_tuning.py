"""Garbage-collector settings for the long-running service processes.

CPython's defaults suit short scripts: a young collection every 700 net allocations, and a full
collection each time the old generation has grown by a quarter. A gateway opening thousands of
sockets grows its old generation all the time, so full collections kept walking every object it
holds (the imported libraries included): py-spy put 10-15% of the gateway's CPU in the
collector while sockets opened. Two changes:

- ``tune`` (at process start): young collections every 2,000 allocations (CPython 3.13's own
  default), so a socket's set-up objects are mostly freed by reference counting before a
  collection looks at them, and full collections come about three times less often. Larger
  thresholds were faster still but let a closed socket's leftovers (its uvicorn and Litestar
  objects refer to each other, ~4.5 KB) pile up: with 10,000, a gateway opening and closing
  1,000 sockets at a time grew from 73 to 126 MB over 12 rounds; with 2,000 it levels off at
  86 MB (76 MB with CPython's defaults).
- ``settle`` (once started): collect, then ``gc.freeze`` what is left (modules, the app, its
  settings) so no later collection walks it again. It lives as long as the process anyway.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle", "tune"]

YOUNG_THRESHOLD = 2_000


def tune() -> None:
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def settle() -> None:
    gc.collect()
    gc.freeze()
