"""The client OT state machine, alone and against a reference server model.

The server model below is written from docs/protocol.md's rules, independently of
``atomic_guide_client._ot``: documents are UTF-16-LE byte strings, operations tuples.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomic_guide_client._document import Desync, SharedDocument
from atomic_guide_client._ot import Delete, Insert, Op, utf16_len

ALPHABET = "ab😀é𝄞"

# --- a tiny reference server ----------------------------------------------------------

SOp = tuple[str, int, str | int]  # ("ins", pos, text) | ("del", pos, length)


def units(text: str) -> bytes:
    return text.encode("utf-16-le")


def s_len(op: SOp) -> int:
    return len(units(op[2])) // 2 if op[0] == "ins" else int(op[2])  # type: ignore[arg-type]


def s_apply(doc: bytes, op: SOp) -> bytes:
    kind, pos, arg = op
    if kind == "ins":
        return doc[: 2 * pos] + units(str(arg)) + doc[2 * pos :]
    return doc[: 2 * pos] + doc[2 * (pos + int(arg)) :]


def s_transform(op: SOp, first: SOp, op_is_first: bool) -> list[SOp]:
    """`op` past `first`; of two inserts at one spot the one applied first stays left."""
    kind, p, arg = op
    fkind, q, farg = first
    n, m = s_len(op), s_len(first)
    if kind == "del" and n == 0:
        return []
    if kind == "ins" and fkind == "ins":
        return [(kind, p + m, arg)] if q < p or (q == p and not op_is_first) else [op]
    if kind == "ins":  # vs delete [q, q+m)
        if p <= q:
            return [op]
        return [(kind, p - m, arg)] if p >= q + m else [(kind, q, arg)]
    if fkind == "ins":  # delete [p, p+n) vs insert at q
        if q <= p:
            return [(kind, p + m, n)]
        if q >= p + n:
            return [op]
        return [("del", p, q - p), ("del", p + m, n - (q - p))]
    if q + m <= p:
        return [(kind, p - m, n)]
    if q >= p + n:
        return [op]
    rest = n - (min(p + n, q + m) - max(p, q))
    return [("del", min(p, q), rest)] if rest else []


def s_pieces_past(pieces: list[SOp], applied: SOp) -> list[SOp]:
    """Transform a sequence of pieces (applied one after the other) past one op the
    server applied before them; `applied` is carried along past each piece in turn."""
    out: list[SOp] = []
    current: list[SOp] = [applied]
    for k, piece in enumerate(pieces):
        if not current:
            out.append(piece)
            continue
        assert len(current) == 1, "only a final piece can split the carried op"
        out.extend(s_transform(piece, current[0], op_is_first=False))
        current = s_transform(current[0], piece, op_is_first=True)
        assert len(current) <= 1 or k == len(pieces) - 1
    return out


def s_merge_touching(pieces: list[SOp]) -> list[SOp]:
    """As the server does: delete parts that end up touching (the insert that split them was
    deleted meanwhile) become one delete, and one version. Applied in order, a part touches the
    one before when it starts where that one was."""
    out: list[SOp] = []
    for piece in pieces:
        prev = out[-1] if out else None
        if prev is not None and prev[0] == piece[0] == "del" and prev[1] == piece[1]:
            out[-1] = ("del", prev[1], int(prev[2]) + int(piece[2]))
        else:
            out.append(piece)
    return out


@dataclass
class ServerModel:
    doc: bytes
    keep: int | None = None  # how many past ops it keeps (older bases: version_mismatch)
    history: list[SOp] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return len(self.history)

    @property
    def text(self) -> str:
        return self.doc.decode("utf-16-le")

    def edit(self, op: SOp, base: int, edit_id: str) -> list[tuple[SOp, int]] | int | None:
        """Apply; return the (piece, version) list, the ack version of a duplicate, or
        None for version_mismatch."""
        if edit_id in self.seen:
            return self.seen[edit_id]
        if base > self.version or (self.keep is not None and base < self.version - self.keep):
            return None
        pieces = [op]
        for applied in self.history[base:]:
            pieces = s_pieces_past(pieces, applied)
        pieces = s_merge_touching(pieces)
        result = []
        for piece in pieces:
            self.doc = s_apply(self.doc, piece)
            self.history.append(piece)
            result.append((piece, self.version))
        self.seen[edit_id] = self.version
        return result


def to_sop(op: Op) -> SOp:
    return (
        ("ins", op.position, op.text) if isinstance(op, Insert) else ("del", op.position, op.length)
    )


def from_sop(op: SOp) -> Op:
    return Insert(op[1], str(op[2])) if op[0] == "ins" else Delete(op[1], int(op[2]))


# The server model must itself satisfy the sequence rule it claims to mirror.
def test_reference_model_splits_a_delete_around_a_concurrent_insert() -> None:
    server = ServerModel(units("0123456789"))
    server.edit(("ins", 4, "XY"), 0, "a")
    assert server.edit(("del", 2, 5), 0, "b") == [(("del", 2, 2), 2), (("del", 4, 3), 3)]
    assert server.text == "01XY789"


# --- the client state machine, one event at a time -----------------------------------


def test_first_local_edit_is_sent_at_once_and_later_ones_wait() -> None:
    doc = SharedDocument("hello", 3)
    assert doc.local(Insert(5, "!")) == Insert(5, "!")
    assert doc.local(Insert(6, "?")) is None
    assert doc.local(Insert(7, "?")) is None
    assert doc.text == "hello!??" and doc.buffer == [Insert(6, "??")]  # typing run merged
    assert doc.ack(4) == Insert(6, "??")
    assert doc.version == 4 and doc.confirmed == "hello!"
    assert doc.ack(5) is None and doc.synced


def test_remote_edits_are_transformed_past_pending_local_ones() -> None:
    doc = SharedDocument("abc", 0)
    doc.local(Insert(3, "X"))  # in flight
    doc.local(Delete(0, 1))  # buffered
    applied = doc.remote(Insert(0, "R"), 1)
    assert doc.text == "RbcX"  # remote R kept; local delete of "a" still effective
    assert applied == [Insert(0, "R")]
    assert doc.inflight == [Insert(4, "X")]
    assert doc.ack(2) == Delete(1, 1)
    assert doc.ack(3) is None
    assert doc.confirmed == doc.text == "RbcX"


def test_the_ack_of_a_split_delete_carries_the_last_of_its_versions() -> None:
    doc = SharedDocument("0123456789", 0)
    doc.local(Delete(2, 5))
    doc.remote(Insert(4, "XY"), 1)
    assert doc.inflight == [Delete(2, 2), Delete(4, 3)]
    assert doc.ack(3) is None  # two pieces: versions 2 and 3
    assert doc.text == doc.confirmed == "01XY789"


def test_an_edit_that_vanished_is_acked_with_the_current_version() -> None:
    doc = SharedDocument("abcdef", 0)
    doc.local(Delete(2, 1))
    doc.remote(Delete(1, 4), 1)
    assert doc.inflight == []
    assert doc.ack(1) is None and doc.synced and doc.text == "af"


def test_a_version_gap_or_unexpected_ack_version_means_desync() -> None:
    doc = SharedDocument("abc", 0)
    with pytest.raises(Desync):
        doc.remote(Insert(0, "x"), 2)
    doc.local(Insert(0, "y"))
    with pytest.raises(Desync):
        doc.ack(7)
    assert doc.resyncing


def test_remote_edits_that_overtake_our_ack_wait_for_it() -> None:
    # The gateway broadcasts edits as they happen and sends our ack once its result is
    # back, so an edit applied after ours can arrive first.
    doc = SharedDocument("abc", 0)
    doc.local(Insert(3, "!"))  # in flight; the server makes it version 1
    doc.local(Insert(0, ">"))  # buffered
    assert doc.remote(Insert(4, "?"), 2) == []  # applied after ours: held
    assert doc.remote(Delete(0, 1), 3) == []
    assert doc.text == ">abc!" and doc.version == 0
    assert doc.ack(1) == Insert(0, ">")  # then 2 and 3, then the buffered insert goes
    assert (doc.version, doc.confirmed, doc.text) == (3, "bc!?", ">bc!?")
    assert doc.ack(4) is None and doc.synced


def test_an_edit_applied_after_our_vanished_one_may_overtake_its_ack() -> None:
    doc = SharedDocument("abcdef", 0)
    doc.local(Delete(2, 1))
    doc.remote(Delete(1, 4), 1)  # ours is now nothing; the server acks it with version 1
    assert doc.inflight == []
    doc.remote(Insert(0, "x"), 2)  # applied after ours, arrives first: not a gap
    assert doc.ack(1) is None and doc.synced
    assert (doc.version, doc.text) == (2, "xaf")


def test_a_gap_our_ack_does_not_fill_means_desync() -> None:
    doc = SharedDocument("abc", 0)
    doc.local(Insert(0, "x"))
    doc.remote(Insert(0, "y"), 3)  # held: versions 1 and 2 must be ours, but...
    with pytest.raises(Desync):
        doc.ack(1)  # ...ours was only 1
    assert doc.resyncing


def test_stale_remote_versions_are_ignored() -> None:
    doc = SharedDocument("abc", 5)
    assert doc.remote(Insert(0, "x"), 5) == []
    assert doc.text == "abc"


def test_version_mismatch_rebases_the_refused_edit_onto_the_snapshot() -> None:
    doc = SharedDocument("hello", 1)
    doc.local(Insert(5, " world"))  # in flight, will be refused
    doc.local(Insert(11, "!"))  # buffered
    doc.reject(keep=True)
    # Meanwhile someone prefixed the text.
    assert doc.rebase(">> hello", 9) == Insert(8, " world")
    assert doc.text == ">> hello world!" and doc.version == 9
    assert doc.ack(10) == Insert(14, "!")


def test_a_refused_edit_that_cannot_be_kept_is_undone_by_the_rebase() -> None:
    doc = SharedDocument("hello", 1)
    doc.local(Insert(0, "X"))
    doc.local(Insert(6, "!"))
    doc.reject(keep=False)
    assert doc.rebase("hello", 1) == Insert(5, "!")
    assert doc.text == "hello!"


def test_local_edits_during_a_resync_wait_for_the_snapshot() -> None:
    doc = SharedDocument("abc", 0)
    doc.begin_resync()
    assert doc.local(Insert(3, "d")) is None
    assert doc.remote(Insert(0, "z"), 1) == []  # ignored: the snapshot will carry it
    assert doc.rebase("zabc", 1) == Insert(4, "d")
    assert doc.text == "zabcd"


def test_rebase_while_an_edit_awaits_its_reply_is_a_bug() -> None:
    doc = SharedDocument("", 0)
    doc.local(Insert(0, "a"))
    with pytest.raises(RuntimeError):
        doc.rebase("", 0)


# --- clients and server converge ------------------------------------------------------


@dataclass
class ClientModel:
    """Drives one SharedDocument like CollaborationClient does, over FIFO links.

    With ``late_acks`` the replies (ack, mismatch, snapshot) travel in ``replies``, in
    order among themselves, and later broadcasts may overtake an ack (as on the real
    gateway); each reply waits only for the ``down`` messages queued before it (the edits
    the server applied before ours). A snapshot reply is never overtaken: the gateway holds
    the session's broadcasts until it is queued.
    """

    doc: SharedDocument
    up: deque[tuple[object, ...]] = field(default_factory=deque)
    down: deque[tuple[object, ...]] = field(default_factory=deque)
    replies: deque[tuple[int, bool, tuple[object, ...]]] = field(default_factory=deque)
    queued: int = 0  # messages ever put on ``down``
    taken: int = 0  # messages ever taken from ``down``
    sent: tuple[Op, int, str] | None = None
    snapshot_pending: bool = False
    counter: int = 0
    desyncs: int = 0

    def send(self, op: Op | None) -> None:
        if op is not None:
            self.counter += 1
            self.sent = (op, self.doc.version, f"{id(self)}-{self.counter}")
            self.up.append(("edit", *self.sent))

    def resync(self) -> None:
        self.doc.begin_resync()
        if not self.snapshot_pending:
            self.snapshot_pending = True
            self.up.append(("snapshot",))

    def receive(self, msg: tuple[object, ...]) -> None:
        kind = msg[0]
        try:
            if kind == "edit":
                self.doc.remote(msg[1], msg[2])  # type: ignore[arg-type]
            elif kind == "ack":
                self.sent = None
                self.send(self.doc.ack(msg[1]))  # type: ignore[arg-type]
            elif kind == "mismatch":
                self.sent = None
                self.doc.reject(keep=True)
                self.resync()
            elif kind == "snapshot":
                self.snapshot_pending = False
                self.send(self.doc.rebase(msg[1], msg[2]))  # type: ignore[arg-type]
        except Desync:
            self.desyncs += 1
            self.resync()

    def push(self, msg: tuple[object, ...]) -> None:
        self.down.append(msg)
        self.queued += 1

    def reply(self, msg: tuple[object, ...], late: bool) -> None:
        if late:
            self.replies.append((self.queued, msg[0] == "snapshot", msg))
        else:
            self.push(msg)

    def can_take(self) -> bool:
        blocked = any(blocks and at <= self.taken for at, blocks, _ in self.replies)
        return bool(self.down) and not blocked

    def take(self) -> None:
        self.taken += 1
        self.receive(self.down.popleft())

    def reply_ready(self) -> bool:
        return bool(self.replies) and self.replies[0][0] <= self.taken

    def take_reply(self) -> None:
        self.receive(self.replies.popleft()[2])

    def reconnect(self) -> None:
        """Lose everything on the wire; re-send the unacked edit (same id) and resync."""
        self.up.clear()
        self.taken += len(self.down)
        self.down.clear()
        self.replies.clear()
        self.snapshot_pending = False
        self.doc.begin_resync()
        if self.sent is not None:
            self.up.append(("edit", *self.sent))
        self.resync()


def deliver_up(
    server: ServerModel, clients: list[ClientModel], i: int, late_acks: bool = False
) -> None:
    client = clients[i]
    msg = client.up.popleft()
    if msg[0] == "snapshot":
        client.reply(("snapshot", server.text, server.version), late_acks)
        return
    _, op, base, edit_id = msg
    result = server.edit(to_sop(op), base, edit_id)  # type: ignore[arg-type]
    if result is None:
        client.reply(("mismatch",), late_acks)
        return
    if isinstance(result, int):
        ack: tuple[object, ...] = ("ack", result)
    else:
        for j, other in enumerate(clients):
            if j != i:
                for piece, v in result:
                    other.push(("edit", from_sop(piece), v))
        ack = ("ack", result[-1][1] if result else server.version)
    client.reply(ack, late_acks)


@st.composite
def local_op(draw: st.DrawFn, text: str) -> Op:
    bounds = [utf16_len(text[:i]) for i in range(len(text) + 1)]
    if not text or draw(st.booleans()):
        return Insert(
            draw(st.sampled_from(bounds)), draw(st.text(ALPHABET, min_size=1, max_size=3))
        )
    i = draw(st.integers(0, len(bounds) - 2))
    j = draw(st.integers(i + 1, min(len(bounds) - 1, i + 4)))
    return Delete(bounds[i], bounds[j] - bounds[i])


# Random interleavings again: the one desync exploration used to find ("aaaaa", late acks) was
# this model's server splitting a delete into two versions where the real one merges the touching
# parts into one (s_merge_touching); the client counted like the real server.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    initial=st.text(ALPHABET, max_size=8),
    n_clients=st.integers(2, 3),
    keep=st.sampled_from([None, None, 2]),
    reconnects=st.booleans(),
    late_acks=st.booleans(),
)
def test_random_interleavings_converge_with_the_server(
    data: st.DataObject,
    initial: str,
    n_clients: int,
    keep: int | None,
    reconnects: bool,
    late_acks: bool,
) -> None:
    server = ServerModel(units(initial), keep=keep)
    clients = [ClientModel(SharedDocument(initial, 0)) for _ in range(n_clients)]
    actions = ["local", "local", "up", "down", "down"] + (["reconnect"] if reconnects else [])
    actions += ["reply"] if late_acks else []
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        i = data.draw(st.integers(0, n_clients - 1), label="client")
        client = clients[i]
        action = data.draw(st.sampled_from(actions), label="action")
        if action == "local":
            client.send(client.doc.local(data.draw(local_op(client.doc.text), label="op")))
        elif action == "up" and client.up:
            deliver_up(server, clients, i, late_acks)
        elif action == "down" and client.can_take():
            client.take()
        elif action == "reply" and client.reply_ready():
            client.take_reply()
        elif action == "reconnect":
            client.reconnect()
    # Quiesce: deliver everything until no link carries anything.
    while any(c.up or c.down or c.replies for c in clients):
        for i, client in enumerate(clients):
            while client.up:
                deliver_up(server, clients, i, late_acks)
            while client.down or client.replies:
                if client.reply_ready():
                    client.take_reply()
                else:
                    client.take()
    for client in clients:
        assert client.doc.synced
        assert client.doc.text == server.text
        assert client.doc.version == server.version
        if keep is None and not reconnects:
            assert client.desyncs == 0  # the ack-version bookkeeping matches the server


def test_the_server_model_gives_a_re_touching_split_delete_one_version_like_the_server() -> None:
    """The case random exploration found: a delete split by an insert that is deleted before
    the delete arrives is one delete and one version, at the model as at the real server."""
    server = ServerModel(units("aaaaa"))
    server.edit(("ins", 0, "a"), 0, "c0-1")
    server.edit(("ins", 0, "a"), 0, "c2-1")
    server.edit(("del", 0, 1), 0, "c1-1")
    server.edit(("del", 1, 1), 2, "c2-2")
    assert server.edit(("del", 0, 6), 1, "c0-2") == [(("del", 0, 5), 5)]
