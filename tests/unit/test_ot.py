import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.collaboration.ot import (
    Delete,
    Insert,
    Op,
    apply,
    apply_all,
    transform,
    transform_against,
)
from services.collaboration.ot_errors import (
    DeleteMismatch,
    LoneSurrogate,
    OutOfRange,
    SplitsSurrogate,
)
from services.collaboration.utf16 import has_lone_surrogate, index_to_utf16

chars = st.one_of(st.sampled_from("ab é中😀👍\U0001f9d1\U00020000"), st.characters(codec="utf-8"))
texts = st.text(alphabet=chars, max_size=24)


def naive_apply(text: str, op: Op) -> str:
    """Model: splice a list of UTF-16 code units."""
    raw = text.encode("utf-16-le", "surrogatepass")
    code = [raw[k : k + 2] for k in range(0, len(raw), 2)]
    if isinstance(op, Insert):
        ins = op.content.encode("utf-16-le")
        code[op.position : op.position] = [ins[k : k + 2] for k in range(0, len(ins), 2)]
    else:
        del code[op.position : op.position + op.length]
    return b"".join(code).decode("utf-16-le")


def boundaries(text: str) -> list[int]:
    return [index_to_utf16(text, i) for i in range(len(text) + 1)]


@st.composite
def ops_on(draw: st.DrawFn, text: str) -> Op:
    at = boundaries(text)
    if draw(st.booleans()):
        return Insert(draw(st.sampled_from(at)), draw(st.text(alphabet=chars, max_size=4)))
    start, end = sorted(draw(st.lists(st.sampled_from(at), min_size=2, max_size=2)))
    return Delete(start, end - start)


def draw_history(data: st.DataObject, text: str, most: int) -> tuple[list[Op], str]:
    """Up to ``most`` operations applied one after the other to ``text``, and the result."""
    history: list[Op] = []
    current = text
    for _ in range(data.draw(st.integers(0, most))):
        h = data.draw(ops_on(current))
        history.append(h)
        current = apply(current, h)
    return history, current


# --- exact examples, one per rule -------------------------------------------------------------


def test_insert_at_the_same_position_goes_right_of_the_one_applied_first() -> None:
    assert transform(Insert(2, "B"), Insert(2, "A")) == [Insert(3, "B")]
    assert apply_all(apply("xxxx", Insert(2, "A")), transform(Insert(2, "B"), Insert(2, "A"))) == (
        "xxABxx"
    )


def test_insert_tie_with_op_first_keeps_its_place() -> None:
    assert transform(Insert(2, "A"), Insert(2, "B"), op_first=True) == [Insert(2, "A")]


def test_insert_before_or_after_another_insert() -> None:
    assert transform(Insert(1, "x"), Insert(3, "😀")) == [Insert(1, "x")]
    assert transform(Insert(5, "x"), Insert(3, "😀")) == [Insert(7, "x")]


def test_insert_inside_a_deleted_range_moves_to_the_delete_start() -> None:
    assert transform(Insert(4, "X"), Delete(2, 5)) == [Insert(2, "X")]


def test_insert_at_the_edges_of_a_deleted_range() -> None:
    assert transform(Insert(2, "X"), Delete(2, 5)) == [Insert(2, "X")]
    assert transform(Insert(7, "X"), Delete(2, 5)) == [Insert(2, "X")]
    assert transform(Insert(9, "X"), Delete(2, 5)) == [Insert(4, "X")]


def test_delete_split_by_a_concurrent_insert_gives_right_part_first() -> None:
    # "abcdef": delete "bcde" while "XY" was inserted between "c" and "d".
    parts = transform(Delete(1, 4), Insert(3, "XY"))
    assert parts == [Delete(5, 2), Delete(1, 2)]
    assert apply_all("abcXYdef", parts) == "aXYf"


def test_delete_after_an_insert_at_or_before_its_start_shifts() -> None:
    assert transform(Delete(2, 3), Insert(2, "😀")) == [Delete(4, 3)]
    assert transform(Delete(2, 3), Insert(5, "x")) == [Delete(2, 3)]


def test_overlapping_deletes_shrink() -> None:
    # "abcdefgh": op removes "cdef", applied removed "efgh" -> only "cd" is left to remove.
    assert transform(Delete(2, 4), Delete(4, 4)) == [Delete(2, 2)]
    # applied removed "abcd" -> "ef" is left, now at position 0.
    assert transform(Delete(2, 4), Delete(0, 4)) == [Delete(0, 2)]


def test_delete_containing_another_delete_keeps_the_rest() -> None:
    assert transform(Delete(1, 6), Delete(3, 2)) == [Delete(1, 4)]


def test_delete_already_fully_deleted_becomes_nothing() -> None:
    assert transform(Delete(3, 2), Delete(1, 6)) == []
    assert transform(Delete(3, 2), Delete(3, 2)) == []


def test_disjoint_deletes_shift() -> None:
    assert transform(Delete(6, 2), Delete(1, 3)) == [Delete(3, 2)]
    assert transform(Delete(1, 2), Delete(6, 3)) == [Delete(1, 2)]


def test_noops_transform_to_nothing_and_change_nothing() -> None:
    assert transform(Insert(1, ""), Insert(0, "a")) == []
    assert transform(Delete(1, 0), Delete(0, 1)) == []
    assert transform(Delete(0, 4), Insert(2, "")) == [Delete(0, 4)]


def test_transform_against_splits_then_transforms_each_part() -> None:
    text = "abcdefgh"
    history: list[Op] = [Insert(3, "X"), Insert(6, "Y"), Delete(0, 1)]
    # op deletes "bcdefg" on the original text; both inserts survive.
    parts = transform_against(Delete(1, 6), history)
    assert parts == [Delete(6, 2), Delete(3, 2), Delete(0, 2)]
    assert apply_all(apply_all(text, history), parts) == "XYh"


def test_transform_against_merges_parts_when_the_splitting_insert_is_gone() -> None:
    history: list[Op] = [Insert(3, "X"), Delete(3, 1)]
    assert transform_against(Delete(1, 4), history) == [Delete(1, 4)]


def test_transform_against_an_empty_history_keeps_the_op() -> None:
    assert transform_against(Insert(0, "a"), []) == [Insert(0, "a")]
    assert transform_against(Delete(0, 0), []) == []


def test_apply_counts_utf16_units() -> None:
    assert apply("a😀b", Insert(3, "X")) == "a😀Xb"
    assert apply("a😀b", Delete(1, 2)) == "ab"


def test_apply_refuses_a_position_inside_a_surrogate_pair() -> None:
    with pytest.raises(SplitsSurrogate):
        apply("a😀b", Insert(2, "X"))
    with pytest.raises(SplitsSurrogate):
        apply("a😀b", Delete(0, 2))


def test_apply_refuses_out_of_range() -> None:
    with pytest.raises(OutOfRange):
        apply("abc", Insert(4, "X"))
    with pytest.raises(OutOfRange):
        apply("abc", Delete(2, 2))
    with pytest.raises(OutOfRange):
        apply("abc", Delete(-1, 1))


def test_apply_refuses_lone_surrogates_in_inserted_text() -> None:
    with pytest.raises(LoneSurrogate):
        apply("abc", Insert(1, "\ud83d"))


def test_apply_checks_delete_content_when_expected() -> None:
    assert apply("a😀b", Delete(1, 2), expected="😀") == "ab"
    with pytest.raises(DeleteMismatch):
        apply("a😀b", Delete(1, 2), expected="xx")


# --- properties against the naive model -------------------------------------------------------


@given(st.data())
def test_apply_matches_the_code_unit_model(data: st.DataObject) -> None:
    text = data.draw(texts)
    op = data.draw(ops_on(text))
    assert apply(text, op) == naive_apply(text, op)


@settings(max_examples=500)
@given(st.data())
def test_concurrent_pairs_converge_tp1(data: st.DataObject) -> None:
    text = data.draw(texts)
    a = data.draw(ops_on(text), label="a (applied first)")
    b = data.draw(ops_on(text), label="b")
    server = apply_all(naive_apply(text, a), transform(b, a))
    mirror = apply_all(naive_apply(text, b), transform(a, b, op_first=True))
    assert server == mirror
    assert not has_lone_surrogate(server)


@given(st.data())
def test_transformed_parts_apply_in_order_without_splitting_pairs(data: st.DataObject) -> None:
    text = data.draw(texts)
    history, current = draw_history(data, text, 4)
    op = data.draw(ops_on(text))
    result = apply_all(current, transform_against(op, history))  # raises on any bad position
    assert not has_lone_surrogate(result)


@given(st.data())
def test_an_insert_against_a_history_is_the_fold_of_single_transforms(data: st.DataObject) -> None:
    """``transform_against`` moves an insert by position alone; it must equal ``transform``
    applied one history operation at a time."""
    text = data.draw(texts)
    history, _ = draw_history(data, text, 8)
    op = Insert(
        data.draw(st.sampled_from(boundaries(text))),
        data.draw(st.text(chars, min_size=1, max_size=3)),
    )
    op_first = data.draw(st.booleans())
    step: list[Op] = [op]
    for h in history:
        step = [q for part in step for q in transform(part, h, op_first=op_first)]
    assert transform_against(op, history, op_first=op_first) == step
