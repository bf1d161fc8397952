import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.collaboration.document import Document, Snapshot
from services.collaboration.ot import Delete, Insert, Op, apply
from services.collaboration.ot_errors import (
    DeleteMismatch,
    LoneSurrogate,
    OutOfRange,
    SplitsSurrogate,
    TooLarge,
    VersionMismatch,
)
from services.collaboration.utf16 import has_lone_surrogate, index_to_utf16, utf16_slice

chars = st.one_of(st.sampled_from("ab é中😀👍\U0001f9d1\U00020000"), st.characters(codec="utf-8"))


def test_new_document_is_empty_at_version_zero() -> None:
    doc = Document()
    assert doc.snapshot() == Snapshot("", 0)
    assert (doc.length, doc.size, doc.oldest_version) == (0, 0, 0)


def test_submit_on_the_current_version_applies_and_bumps_the_version() -> None:
    doc = Document()
    assert doc.submit(Insert(0, "hi 😀"), 0) == [(Insert(0, "hi 😀"), 1)]
    assert doc.submit(Insert(5, "!"), 1) == [(Insert(5, "!"), 2)]
    assert (doc.content, doc.version, doc.length, doc.size) == ("hi 😀!", 2, 6, 8)


def test_concurrent_insert_at_the_same_position_goes_right_of_the_first() -> None:
    doc = Document("ac")
    doc.submit(Insert(1, "X"), 0)
    assert doc.submit(Insert(1, "Y"), 0) == [(Insert(2, "Y"), 2)]
    assert doc.content == "aXYc"


def test_delete_split_by_a_concurrent_insert_becomes_two_versions() -> None:
    doc = Document("abcdef")
    doc.submit(Insert(3, "XY"), 0)
    applied = doc.submit(Delete(1, 4), 0)
    assert applied == [(Delete(5, 2), 2), (Delete(1, 2), 3)]
    assert doc.content == "aXYf"
    assert doc.ops_since(1) == applied


def test_delete_of_text_already_deleted_changes_nothing() -> None:
    doc = Document("abcdef")
    doc.submit(Delete(1, 4), 0)
    assert doc.submit(Delete(2, 2), 0) == []
    assert (doc.content, doc.version) == ("af", 1)


def test_noop_edits_change_nothing() -> None:
    doc = Document("abc")
    assert doc.submit(Insert(1, ""), 0) == []
    assert doc.submit(Delete(1, 0), 0) == []
    assert doc.version == 0


def test_future_version_is_a_version_mismatch() -> None:
    doc = Document("abc")
    with pytest.raises(VersionMismatch) as err:
        doc.submit(Insert(0, "x"), 1)
    assert err.value.current_version == 0


def test_version_older_than_the_kept_history_is_a_version_mismatch() -> None:
    doc = Document(max_history=2)
    for v in range(3):
        doc.submit(Insert(0, "x"), v)
    assert doc.oldest_version == 1
    doc.submit(Insert(0, "y"), 1)  # still kept
    with pytest.raises(VersionMismatch) as err:
        doc.submit(Insert(0, "z"), 1)
    assert err.value.current_version == 4
    with pytest.raises(VersionMismatch):
        doc.submit(Insert(0, "z"), -1)


def test_range_is_checked_against_the_base_version() -> None:
    doc = Document("ab")
    doc.submit(Insert(2, "cdef"), 0)
    with pytest.raises(OutOfRange):
        doc.submit(Delete(1, 2), 0)  # "ab" had no third unit
    with pytest.raises(OutOfRange):
        doc.submit(Insert(3, "x"), 0)
    with pytest.raises(OutOfRange):
        doc.submit(Delete(0, -1), 1)
    assert doc.submit(Delete(1, 2), 1) == [(Delete(1, 2), 2)]


def test_edit_splitting_a_surrogate_pair_is_refused() -> None:
    doc = Document("a😀b")
    with pytest.raises(SplitsSurrogate):
        doc.submit(Insert(2, "x"), 0)
    doc.submit(Insert(0, "zz"), 0)
    with pytest.raises(SplitsSurrogate):
        doc.submit(Delete(2, 2), 0)  # transformed to Delete(4, 2), still inside the pair
    assert (doc.content, doc.version) == ("zza😀b", 1)


def test_split_at_the_base_version_whose_character_was_deleted_lands_at_the_delete_start() -> None:
    doc = Document("a😀b")
    doc.submit(Delete(1, 2), 0)
    assert doc.submit(Insert(2, "x"), 0) == [(Insert(1, "x"), 2)]
    assert doc.content == "axb"


def test_lone_surrogates_are_refused() -> None:
    doc = Document("abc")
    with pytest.raises(LoneSurrogate):
        doc.submit(Insert(1, "\ud83d"), 0)
    with pytest.raises(LoneSurrogate):
        doc.submit(Delete(0, 1), 0, delete_content="\ude00")
    with pytest.raises(LoneSurrogate):
        doc.restore("\ud83d", 3)
    assert doc.snapshot() == Snapshot("abc", 0)


def test_delete_content_must_equal_the_removed_text() -> None:
    doc = Document("a😀b")
    with pytest.raises(DeleteMismatch):
        doc.submit(Delete(1, 2), 0, delete_content="xy")
    with pytest.raises(DeleteMismatch):
        doc.submit(Delete(1, 2), 0, delete_content="😀b")
    assert doc.submit(Delete(1, 2), 0, delete_content="😀") == [(Delete(1, 2), 1)]


def test_delete_content_is_checked_against_the_base_version_when_transformed() -> None:
    doc = Document("abcdefgh")
    doc.submit(Delete(4, 4), 0)  # "efgh" went concurrently
    doc.submit(Insert(3, "XY"), 1)  # and "XY" came between "c" and "d"
    with pytest.raises(DeleteMismatch):
        doc.submit(Delete(2, 4), 0, delete_content="cdeZ")  # wrong in the deleted part
    with pytest.raises(DeleteMismatch):
        doc.submit(Delete(2, 4), 0, delete_content="Zdef")  # wrong in the remaining part
    assert doc.submit(Delete(2, 4), 0, delete_content="cdef") == [
        (Delete(5, 1), 3),
        (Delete(2, 1), 4),
    ]
    assert doc.content == "abXY"


def test_failed_split_delete_changes_nothing() -> None:
    doc = Document("abcdef")
    doc.submit(Insert(3, "XY"), 0)
    with pytest.raises(DeleteMismatch):
        doc.submit(Delete(1, 4), 0, delete_content="zcde")  # right part fine, left part wrong
    assert doc.snapshot() == Snapshot("abcXYdef", 1)


def test_delete_content_for_an_insert_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Document("a").submit(Insert(0, "x"), 0, delete_content="x")


def test_size_cap_counts_utf8_bytes_and_refuses_growth_past_it() -> None:
    doc = Document("abcdef", max_bytes=10)
    doc.submit(Insert(0, "😀"), 0)  # 4 bytes: exactly at the cap
    with pytest.raises(TooLarge) as err:
        doc.submit(Insert(0, "x"), 1)
    assert (err.value.size, err.value.limit) == (11, 10)
    assert doc.size == 10 and doc.version == 1
    doc.submit(Delete(0, 2), 1)
    assert doc.size == 6


def test_snapshot_and_restore_round_trip_and_restart_history() -> None:
    doc = Document()
    doc.submit(Insert(0, "hello 😀"), 0)
    snap = doc.snapshot()
    other = Document()
    other.restore(*snap)
    assert other.snapshot() == snap and other.length == doc.length and other.size == doc.size
    assert other.oldest_version == 1
    with pytest.raises(VersionMismatch):
        other.submit(Insert(0, "x"), 0)


def test_replay_rebuilds_from_a_snapshot_and_a_log() -> None:
    doc = Document("abcdef")
    log = doc.submit(Insert(3, "XY"), 0) + doc.submit(Delete(1, 4), 0)
    rebuilt = Document()
    rebuilt.restore("abcdef", 0)
    assert [rebuilt.replay(op, v) for op, v in log] == [True, True, True]
    assert rebuilt.snapshot() == doc.snapshot()
    assert rebuilt.ops_since(0) == doc.ops_since(0)


def test_replay_skips_versions_it_has_and_refuses_gaps() -> None:
    doc = Document("abc", 5)
    assert doc.replay(Insert(0, "x"), 5) is False
    with pytest.raises(VersionMismatch):
        doc.replay(Insert(0, "x"), 7)
    assert doc.replay(Insert(0, "x"), 6) is True
    assert doc.snapshot() == Snapshot("xabc", 6)


def test_replay_ignores_the_size_cap_but_checks_the_range() -> None:
    doc = Document("abc", max_bytes=3)
    assert doc.replay(Insert(3, "d"), 1)
    with pytest.raises(OutOfRange):
        doc.replay(Delete(3, 2), 2)


# --- many clients on stale versions -----------------------------------------------------------


@st.composite
def edit_on(draw: st.DrawFn, text: str) -> tuple[Op, str | None]:
    at = [index_to_utf16(text, i) for i in range(len(text) + 1)]
    if draw(st.integers(0, 2)) == 0 or not text:
        return Insert(draw(st.sampled_from(at)), draw(st.text(alphabet=chars, max_size=4))), None
    start, end = sorted(draw(st.lists(st.sampled_from(at), min_size=2, max_size=2)))
    content = utf16_slice(text, start, end) if draw(st.booleans()) else None
    return Delete(start, end - start), content


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_clients_on_stale_versions_converge_with_a_replaying_replica(data: st.DataObject) -> None:
    initial = data.draw(st.text(alphabet=chars, max_size=12))
    doc = Document(initial, max_history=data.draw(st.sampled_from([3, 1000])))
    texts = [initial]  # the text at each version
    replica = initial
    log: list[tuple[Op, int]] = []
    for _ in range(data.draw(st.integers(1, 12))):
        base = data.draw(st.integers(doc.oldest_version, doc.version))
        op, content = data.draw(edit_on(texts[base]))
        for applied, version in doc.submit(op, base, content):
            replica = apply(replica, applied)
            assert version == len(texts)
            texts.append(replica)
            log.append((applied, version))
        assert replica == doc.content
        assert not has_lone_surrogate(doc.content)
    rebuilt = Document(initial)
    for op, version in log:
        rebuilt.replay(op, version)
    assert rebuilt.snapshot() == doc.snapshot()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_wrong_delete_content_is_always_caught(data: st.DataObject) -> None:
    initial = data.draw(st.text(alphabet=chars, min_size=1, max_size=12))
    doc = Document(initial)
    texts = [initial]
    for _ in range(data.draw(st.integers(0, 6))):
        base = data.draw(st.integers(0, doc.version))
        op, content = data.draw(edit_on(texts[base]))
        for applied, _v in doc.submit(op, base, content):
            texts.append(apply(texts[-1], applied))
    base = data.draw(st.integers(0, doc.version))
    text = texts[base]
    i, j = sorted(data.draw(st.lists(st.integers(0, len(text)), min_size=2, max_size=2)))
    k = data.draw(st.integers(i, j))
    wrong = text[i:k] + "\x00" + text[k + 1 : j]  # one character replaced (or one added)
    if wrong == text[i:j]:
        return
    before = doc.snapshot()
    start, end = index_to_utf16(text, i), index_to_utf16(text, j)
    with pytest.raises(DeleteMismatch):
        doc.submit(Delete(start, end - start), base, delete_content=wrong)
    assert doc.snapshot() == before


# Every character unique: an edit's effect on each character can be checked one by one.
class Fresh:
    """Characters never used before in this example, every third one astral."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def __call__(self, n: int) -> str:
        ks = itertools.islice(self._next, n)
        return "".join(chr(0x20000 + k) if k % 3 == 0 else chr(0x4E00 + k) for k in ks)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_each_edit_touches_exactly_what_its_author_saw(data: st.DataObject) -> None:
    fresh = Fresh()
    doc = Document(fresh(data.draw(st.integers(0, 10))))
    texts = [doc.content]
    for _ in range(data.draw(st.integers(1, 10))):
        base = data.draw(st.integers(0, doc.version))
        seen = texts[base]
        i, j = sorted(data.draw(st.lists(st.integers(0, len(seen)), min_size=2, max_size=2)))
        before = doc.content
        if data.draw(st.booleans()):
            new = fresh(data.draw(st.integers(1, 3)))
            applied = doc.submit(Insert(index_to_utf16(seen, i), new), base)
            at = doc.content.index(new)
            assert doc.content[:at] + doc.content[at + len(new) :] == before
            assert not set(doc.content[:at]) & set(seen[i:])  # nothing seen right went left
            assert not set(doc.content[at + len(new) :]) & set(seen[:i])  # nor left went right
        else:
            start, end = index_to_utf16(seen, i), index_to_utf16(seen, j)
            applied = doc.submit(Delete(start, end - start), base)
            gone = set(seen[i:j])
            assert doc.content == "".join(c for c in before if c not in gone)
        for op, _version in applied:
            texts.append(apply(texts[-1], op))
        assert texts[-1] == doc.content
