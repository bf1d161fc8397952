"""Wire timestamps: the cached second never leaks into another second's timestamp."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shared.timefmt import ms_to_ts, parse_ts

stamps = st.integers(min_value=-86_400_000, max_value=4_102_444_800_000)  # 1969 .. 2100


def _reference(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@given(st.lists(stamps, min_size=1, max_size=20), st.integers(0, 2000))
def test_ms_to_ts_is_the_iso_form_in_any_order(values: list[int], step: int) -> None:
    for ms in values + [values[0] + step, values[0] - step, values[0]]:  # near and far seconds
        text = ms_to_ts(ms)
        assert text == _reference(ms)
        assert parse_ts(text) == ms


def test_boundaries() -> None:
    assert ms_to_ts(0) == "1970-01-01T00:00:00.000Z"
    assert ms_to_ts(999) == "1970-01-01T00:00:00.999Z"
    assert ms_to_ts(1000) == "1970-01-01T00:00:01.000Z"
    assert ms_to_ts(-1) == "1969-12-31T23:59:59.999Z"
