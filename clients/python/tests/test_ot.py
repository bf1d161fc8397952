from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_guide_client._ot import (
    Delete,
    Insert,
    Op,
    apply,
    apply_all,
    diff,
    merge,
    transform,
    transform_lists,
    utf16_len,
)

ALPHABET = "ab\n😀é𝄞"


def test_utf16_length_counts_astral_characters_twice() -> None:
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("é") == 1
    assert utf16_len("😀") == 2
    assert utf16_len("a😀𝄞") == 5


def test_positions_are_utf16_code_units() -> None:
    assert apply("a😀b", Insert(3, "X")) == "a😀Xb"
    assert apply("a😀b", Delete(1, 2)) == "ab"


@pytest.mark.parametrize("op", [Insert(2, "X"), Delete(2, 1), Delete(0, 2), Insert(9, "X")])
def test_edits_that_split_a_surrogate_pair_or_leave_the_text_are_refused(op: Op) -> None:
    with pytest.raises(ValueError):
        apply("a😀b", op)


def test_concurrent_inserts_at_one_position_keep_the_server_first_op_left() -> None:
    local, remote = Insert(1, "L"), Insert(1, "R")
    # The server applied `remote` first: it stays left, the local insert shifts right.
    assert transform(local, remote, wins_tie=False) == [Insert(2, "L")]
    assert transform(remote, local, wins_tie=True) == [Insert(1, "R")]
    assert apply(apply("ab", remote), Insert(2, "L")) == "aRLb"


def test_an_insert_strictly_inside_a_deleted_range_moves_to_the_delete_start() -> None:
    assert transform(Insert(3, "X"), Delete(1, 4), wins_tie=False) == [Insert(1, "X")]
    # At the edges it is not "inside": before stays, after shifts.
    assert transform(Insert(1, "X"), Delete(1, 4), wins_tie=False) == [Insert(1, "X")]
    assert transform(Insert(5, "X"), Delete(1, 4), wins_tie=False) == [Insert(1, "X")]
    assert transform(Insert(7, "X"), Delete(1, 4), wins_tie=False) == [Insert(3, "X")]


def test_a_delete_around_a_concurrent_insert_splits_into_before_and_after() -> None:
    text = "0123456789"
    delete, insert = Delete(2, 5), Insert(4, "XY")  # deletes "23456", inserts inside
    parts = transform(delete, insert, wins_tie=False)
    assert parts == [Delete(2, 2), Delete(4, 3)]
    assert apply_all(apply(text, insert), parts) == "01XY789"


def test_overlapping_deletes_shrink_and_a_covered_delete_vanishes() -> None:
    assert transform(Delete(2, 4), Delete(4, 4), wins_tie=False) == [Delete(2, 2)]
    assert transform(Delete(4, 4), Delete(2, 4), wins_tie=False) == [Delete(2, 2)]
    assert transform(Delete(3, 2), Delete(1, 6), wins_tie=False) == []
    assert transform(Delete(1, 6), Delete(3, 2), wins_tie=False) == [Delete(1, 4)]
    assert transform(Delete(5, 2), Delete(1, 2), wins_tie=False) == [Delete(3, 2)]


def test_diff_finds_one_delete_and_one_insert_around_common_ends() -> None:
    assert diff("hello world", "hello brave world") == [Insert(6, "brave ")]
    assert diff("a😀b", "ab") == [Delete(1, 2)]
    assert diff("😀x😀", "😀y😀") == [Delete(2, 1), Insert(2, "y")]
    assert diff("same", "same") == []


def test_diff_of_typing_spread_over_the_text_gives_one_insert_per_place() -> None:
    # two inserts, not one delete of "b" and one insert over the whole span
    assert diff("<a><b><c>", "<a><x><b><y><c>") == [Insert(4, "x><"), Insert(8, "><y")]
    assert diff("a😀b😀c", "a😀xb😀yc") == [Insert(3, "x"), Insert(7, "y")]
    assert diff("abc", "xbz") == [Delete(0, 3), Insert(0, "xbz")]  # not kept in order


@pytest.mark.parametrize("seed", range(200))
def test_a_local_insert_rebased_on_a_resync_diff_stays_between_its_words(seed: int) -> None:
    """A resync after missed edits: others' words appeared all over the document; the word
    this client typed meanwhile must land between two words, not inside one of theirs."""
    r = random.Random(seed)
    words = [f"<e{r.randrange(6)}.{i}>" for i in range(40)]
    old = "".join(words)
    for k in range(5):
        words.insert(r.randrange(len(words) + 1), f"<e{r.randrange(6)}.{100 + k}>")
    new = "".join(words)
    ends = [0] + [i + 1 for i, ch in enumerate(old) if ch == ">"]
    local = [Insert(r.choice(ends), "<W>")]
    rebased, _ = transform_lists(local, diff(old, new), ops_win_ties=False)
    result = apply_all(new, rebased)
    tokens = re.findall(r"<[^<>]*>", result)
    assert "".join(tokens) == result and "<W>" in tokens


def test_typing_and_backspacing_runs_merge_into_one_op() -> None:
    assert merge(Insert(3, "ab"), Insert(5, "c")) == Insert(3, "abc")
    assert merge(Insert(3, "😀"), Insert(5, "c")) == Insert(3, "😀c")
    assert merge(Delete(5, 1), Delete(4, 1)) == Delete(4, 2)  # backspace
    assert merge(Delete(5, 1), Delete(5, 2)) == Delete(5, 3)  # forward delete
    assert merge(Insert(3, "a"), Delete(3, 1)) is None
    assert merge(Insert(3, "a"), Insert(9, "b")) is None


# --- properties ---------------------------------------------------------------------


@st.composite
def text_and_ops(draw: st.DrawFn, max_ops: int = 4) -> tuple[str, list[Op]]:
    text = draw(st.text(alphabet=ALPHABET, max_size=10))
    return text, draw(ops_on(text, max_ops))


@st.composite
def ops_on(draw: st.DrawFn, text: str, max_ops: int) -> list[Op]:
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(op_on(text))
        ops.append(op)
        text = apply(text, op)
    return ops


@st.composite
def op_on(draw: st.DrawFn, text: str) -> Op:
    bounds = [utf16_len(text[:i]) for i in range(len(text) + 1)]
    if not text or draw(st.booleans()):
        return Insert(
            draw(st.sampled_from(bounds)), draw(st.text(ALPHABET, min_size=1, max_size=3))
        )
    i = draw(st.integers(0, len(bounds) - 2))
    j = draw(st.integers(i + 1, len(bounds) - 1))
    return Delete(bounds[i], bounds[j] - bounds[i])


@given(data=st.data(), ops_win=st.booleans())
def test_transformed_sequences_converge_tp1(data: st.DataObject, ops_win: bool) -> None:
    text = data.draw(st.text(alphabet=ALPHABET, max_size=10))
    ours = data.draw(ops_on(text, 4))
    theirs = data.draw(ops_on(text, 4))
    ours2, theirs2 = transform_lists(ours, theirs, ops_win_ties=ops_win)
    assert apply_all(apply_all(text, theirs), ours2) == apply_all(apply_all(text, ours), theirs2)


@given(old=st.text(ALPHABET, max_size=12), new=st.text(ALPHABET, max_size=12))
def test_diff_turns_old_into_new(old: str, new: str) -> None:
    assert apply_all(old, diff(old, new)) == new


@given(data=text_and_ops(max_ops=2))
def test_merge_is_equivalent_to_applying_both(data: tuple[str, list[Op]]) -> None:
    text, ops = data
    if len(ops) == 2 and (merged := merge(ops[0], ops[1])) is not None:
        assert apply(text, merged) == apply_all(text, ops)
