"""What a room does with a batch of ``message`` commands (sans-I/O): ``decide``, then ``apply``.

``decide(room, commands, now, allow)`` looks at the room and returns, without changing it, the
events to append and every command's answer; ``Room.apply`` (the only mutation) takes the events
once they are in the log. One path for a batch of any size:

- a command whose dedup key (its client frame id per user, else the gateway's request id) the
  room has, or an earlier command of the same batch has, is answered with the original
  ``{messageId, seq}`` and stored nothing; if that message was read back from the log and may
  never have been broadcast (a crash in between), it is broadcast again (gateways drop what they
  already handed out);
- a command past its deadline gets no answer and stores nothing (the gateway has answered
  ``unavailable``, which must stay true);
- a command over the room's broadcast limit (``allow`` says no) gets ``rate_limited``;
- every other command becomes a ``chat.message`` event with the next ``seq``.

The events go to the room's subject in one atomic batch with the room's last stream sequence
expected (``Decision.expect_last``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.chat.room import Room
from shared import subjects
from shared.schemas.commands import CommandResult, PostMessage, command_key
from shared.schemas.events import ChatMessagePosted, encode_event
from shared.worker import Decision

__all__ = ["ChatNotes", "decide", "msg_id"]

Allow = Callable[[str], bool]  # context id -> may the room broadcast one more message now?


@dataclass(slots=True)
class ChatNotes:
    """What ``apply`` and the broadcasts need beyond the bytes: the new events, in order, and
    logged messages to broadcast again."""

    new: list[ChatMessagePosted] = field(default_factory=list)
    again: list[int] = field(default_factory=list)  # seqs


def msg_id(cmd: PostMessage) -> str:
    """``Nats-Msg-Id``: the same for every delivery of a command and for a re-sent frame id, so
    the log stores it once within its duplicate window. token() keeps it header-safe: a client id
    may hold any character, even CR/LF."""
    t = subjects.token
    user, ident = command_key(cmd)
    return f"chat:{t(cmd.contextId)}:{t(user) if user else '~'}:{t(ident)}"


def decide(
    room: Room, commands: Sequence[PostMessage], now: int, allow: Allow
) -> Decision[PostMessage]:
    notes = ChatNotes()
    decision = Decision[PostMessage](
        subjects.chat_messages(room.context_id), room.last_subject_seq, extra=notes, atomic=False
    )
    batch: dict[tuple[str, str], tuple[str, int]] = {}  # keys stored by this batch
    for cmd in commands:
        key = command_key(cmd)
        dup = room.duplicate_of(cmd.origin.userId, cmd.clientId, cmd.requestId) or batch.get(key)
        if dup is not None:
            if dup[1] in room.unsure and dup[1] not in notes.again:
                notes.again.append(dup[1])
            decision.results.append(ok(cmd, *dup))
            continue
        if now > cmd.deadline:  # the gateway has answered `unavailable`: keep that true
            decision.results.append(None)
            continue
        if not allow(cmd.contextId):
            decision.results.append(rate_limited(cmd))
            continue
        ev = ChatMessagePosted(
            contextId=cmd.contextId,
            ts=now,
            messageId=uuid.uuid4().hex,
            seq=room.seq + 1 + len(notes.new),
            userId=cmd.origin.userId,
            userName=cmd.origin.userName,
            content=cmd.content,
            messageType=cmd.messageType,
            clientId=cmd.clientId,
            requestId=cmd.requestId if cmd.clientId is None else None,
        )
        notes.new.append(ev)
        decision.events.append((msg_id(cmd), encode_event(ev)))
        batch[key] = (ev.messageId, ev.seq)
        decision.results.append(ok(cmd, ev.messageId, ev.seq))
    return decision


def ok(cmd: PostMessage, message_id: str, seq: int) -> CommandResult:
    return CommandResult(
        requestId=cmd.requestId,
        connectionId=cmd.origin.connectionId,
        clientId=cmd.clientId,
        ok={"messageId": message_id, "seq": seq},
    )


def rate_limited(cmd: PostMessage) -> CommandResult:
    return CommandResult(
        requestId=cmd.requestId,
        connectionId=cmd.origin.connectionId,
        clientId=cmd.clientId,
        error="rate_limited",
        message="too many messages in this room; try again shortly",
    )
