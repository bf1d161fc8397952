import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.collaboration.ot_errors import OutOfRange, SplitsSurrogate
from services.collaboration.utf16 import (
    has_lone_surrogate,
    index_to_utf16,
    splits_surrogate_pair,
    utf8_len,
    utf16_back_to_index,
    utf16_len,
    utf16_slice,
    utf16_to_index,
)

# Texts with a good share of astral characters (two UTF-16 units each).
chars = st.one_of(
    st.sampled_from("ab é中😀👍🏽\U0001f9d1\U00020000"),
    st.characters(codec="utf-8"),
)
texts = st.text(alphabet=chars, max_size=40)


def units(s: str) -> list[int]:
    """Naive model: the UTF-16 code units of s."""
    raw = s.encode("utf-16-le", "surrogatepass")
    return [int.from_bytes(raw[k : k + 2], "little") for k in range(0, len(raw), 2)]


def test_utf16_len_counts_astral_characters_twice() -> None:
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("é中") == 2
    assert utf16_len("😀") == 2
    assert utf16_len("a😀b") == 4


def test_utf8_len_counts_bytes() -> None:
    assert utf8_len("abc") == 3
    assert utf8_len("é") == 2
    assert utf8_len("😀") == 4


def test_utf16_to_index_maps_offsets_after_emoji() -> None:
    s = "a😀b😀"
    assert [utf16_to_index(s, u) for u in (0, 1, 3, 4, 6)] == [0, 1, 2, 3, 4]


def test_utf16_to_index_refuses_an_offset_inside_a_pair() -> None:
    with pytest.raises(SplitsSurrogate):
        utf16_to_index("a😀b", 2)
    with pytest.raises(SplitsSurrogate):
        utf16_to_index("😀😀😀", 5)


def test_utf16_to_index_refuses_offsets_outside_the_text() -> None:
    with pytest.raises(OutOfRange):
        utf16_to_index("a😀", 4)
    with pytest.raises(OutOfRange):
        utf16_to_index("abc", 4)
    with pytest.raises(OutOfRange):
        utf16_to_index("abc", -1)
    with pytest.raises(OutOfRange):
        utf16_to_index("abc", 0, start=4)


def test_utf16_to_index_counts_from_start() -> None:
    s = "😀a😀b"
    assert utf16_to_index(s, 3, start=1) == 3
    assert utf16_to_index(s, 0, start=4) == 4
    with pytest.raises(SplitsSurrogate):
        utf16_to_index(s, 2, start=1)


def test_utf16_back_to_index_walks_back_from_an_end() -> None:
    s = "😀a😀b"
    assert utf16_back_to_index(s, 3, 3) == 1
    assert utf16_back_to_index(s, 6, 4) == 0
    assert utf16_back_to_index(s, 0, 2) == 2
    with pytest.raises(SplitsSurrogate):
        utf16_back_to_index(s, 1, 3)
    with pytest.raises(OutOfRange):
        utf16_back_to_index(s, 4, 2)
    with pytest.raises(OutOfRange):
        utf16_back_to_index("abc", 4, 3)


def test_utf16_to_index_is_fast_path_identity_on_ascii() -> None:
    s = "x" * (1 << 20)
    assert utf16_to_index(s, 1 << 19) == 1 << 19


def test_utf16_to_index_on_a_mebibyte_of_emoji() -> None:
    s = "😀" * (1 << 18)
    assert utf16_to_index(s, 1 << 19) == 1 << 18
    assert utf16_to_index(s, 2, start=(1 << 18) - 1) == 1 << 18


def test_has_lone_surrogate() -> None:
    assert not has_lone_surrogate("")
    assert not has_lone_surrogate("plain")
    assert not has_lone_surrogate("😀é")
    assert has_lone_surrogate("\ud83d")
    assert has_lone_surrogate("x\ude00y")
    assert has_lone_surrogate("😀\ud83d")


def test_splits_surrogate_pair() -> None:
    s = "a😀"
    assert [splits_surrogate_pair(s, u) for u in range(4)] == [False, False, True, False]
    with pytest.raises(OutOfRange):
        splits_surrogate_pair(s, 4)


def test_utf16_slice() -> None:
    s = "a😀b😀c"
    assert utf16_slice(s, 1, 3) == "😀"
    assert utf16_slice(s, 3) == "b😀c"
    assert utf16_slice(s, 0, 0) == ""
    with pytest.raises(SplitsSurrogate):
        utf16_slice(s, 1, 2)
    with pytest.raises(OutOfRange):
        utf16_slice(s, 3, 1)


def test_index_to_utf16() -> None:
    assert index_to_utf16("a😀b", 2) == 3
    with pytest.raises(OutOfRange):
        index_to_utf16("ab", 3)


@given(texts)
def test_utf16_len_matches_the_code_unit_model(s: str) -> None:
    assert utf16_len(s) == len(units(s))


@given(texts, st.data())
def test_every_index_round_trips_through_its_offset(s: str, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(s)))
    start = data.draw(st.integers(0, i))
    u = index_to_utf16(s, i)
    assert utf16_to_index(s, u) == i
    assert utf16_to_index(s, u - index_to_utf16(s, start), start) == i


@given(texts, st.data())
def test_offsets_split_exactly_where_a_high_surrogate_precedes(s: str, data: st.DataObject) -> None:
    code = units(s)
    u = data.draw(st.integers(0, len(code)))
    inside = 0 < u < len(code) and 0xD800 <= code[u - 1] <= 0xDBFF
    assert splits_surrogate_pair(s, u) == inside
    if not inside:
        i = utf16_to_index(s, u)
        assert units(s[:i]) == code[:u]


@given(texts, st.data())
def test_walking_back_from_any_index_agrees_with_walking_forward(
    s: str, data: st.DataObject
) -> None:
    end = data.draw(st.integers(0, len(s)))
    back = data.draw(st.integers(0, index_to_utf16(s, end)))
    target = index_to_utf16(s, end) - back
    if splits_surrogate_pair(s, target):
        with pytest.raises(SplitsSurrogate):
            utf16_back_to_index(s, back, end)
    else:
        assert utf16_back_to_index(s, back, end) == utf16_to_index(s, target)
