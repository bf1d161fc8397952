"""The connect URL's query: read once, then out of the scope (it carries the bearer token)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.session import take_query
from shared.schemas.wire import AuthData


def test_the_token_and_its_context_come_from_the_query_which_then_leaves_the_scope() -> None:
    scope: dict[str, Any] = {"query_string": b"contextId=course%201&token=a.b.c&lastSeq=7&batch=1"}
    batch, auth = take_query(scope)
    assert batch is True
    assert auth == AuthData(token="a.b.c", contextId="course 1", lastSeq=7)
    assert scope["query_string"] == b""


def test_no_token_no_auth_and_the_first_of_repeated_values_wins() -> None:
    assert take_query({"query_string": b"contextId=c&batch=0"}) == (False, None)
    assert take_query({}) == (False, None)
    _, auth = take_query({"query_string": b"token=first&token=second&lastSeq=x"})
    assert auth == AuthData(token="first", contextId=None, lastSeq=None)


def test_an_empty_token_still_asks_for_auth_so_it_is_refused_not_ignored() -> None:
    _, auth = take_query({"query_string": b"token=&contextId=c"})
    assert auth is not None and auth.token == ""


@given(st.binary(max_size=200))
def test_any_query_bytes_parse_without_raising(query: bytes) -> None:
    scope: dict[str, Any] = {"query_string": query}
    batch, auth = take_query(scope)
    assert isinstance(batch, bool)
    assert auth is None or isinstance(auth.token, str)
    assert scope["query_string"] == b""
