from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared import gc_tuning


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_raises_only_the_young_threshold(restored: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc_tuning.tune()
    assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, 10, 10)


def test_settle_collects_start_up_cycles_then_freezes_what_is_left(restored: None) -> None:
    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the collector frees
    gone = weakref.ref(a)
    del a, b
    gc_tuning.settle()
    assert gone() is None
    assert gc.get_freeze_count() > 0
