"""Chat client (``/api/chat/ws``): messages exactly once, in ``seq`` order, across reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Unpack

import msgspec

from ._dispatch import Frame
from ._sequencer import Sequencer
from .config import ConnectionOptions
from .connection import Connection, TokenProvider
from .errors import AtomicGuideError
from .frames import (
    HistoryRequest,
    MessageFrame,
    MessageRequest,
    RecoveredFrame,
    TypingRequest,
)
from .payloads import ChatAck, HistoryPage, HistoryQuery, MessagePayload, TypingPayload

__all__ = ["ChatClient"]

#: The server's largest ``history`` page (docs/protocol.md: ``limit`` 1-100).
MAX_HISTORY_PAGE = 100


class ChatClient(Connection):
    """A chat room: the context ``context_id``.

    Every ``message`` reaches the application (``async for`` / ``on("message", cb)``)
    exactly once and in ``seq`` order, also across reconnects: the client reconnects with
    ``lastSeq`` = the highest ``seq`` it delivered, holds what arrives until ``recovered``
    and, when the server says the gap was too large (``truncated``), pages backwards
    through ``history`` until the gap is filled, then releases everything in order and
    finally the ``recovered`` frame itself.

    Args:
        last_seq: resume after this ``seq`` (e.g. persisted by a previous run); the first
            connection then recovers too.
        history_page_size: page size of the gap-filling ``history`` requests.
        **options: see :class:`~.connection.Connection`.
    """

    path = "/api/chat/ws"

    def __init__(
        self,
        url: str,
        context_id: str,
        token_provider: TokenProvider | str,
        *,
        last_seq: int | None = None,
        history_page_size: int = MAX_HISTORY_PAGE,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        super().__init__(url, context_id, token_provider, **options)
        if not 1 <= history_page_size <= MAX_HISTORY_PAGE:
            raise ValueError(f"history_page_size must be 1-{MAX_HISTORY_PAGE}")
        self._sequencer = Sequencer(last_seq)
        self._page_size = history_page_size
        self._resumed_from: int | None = None
        self._gap_fill: asyncio.Future[Any] | None = None

    @property
    def last_seq(self) -> int | None:
        """The highest ``seq`` delivered to the application so far."""
        return self._sequencer.last_seq

    async def send_message(self, content: str, message_type: str = "text") -> ChatAck:
        """Post a message; returns ``{messageId, seq}`` once it is durably stored.

        The message itself also comes back as a ``message`` frame, like everyone's.
        """
        payload = MessagePayload(content=content, message_type=message_type)
        data = await self.send(MessageRequest(data=payload))
        return msgspec.convert(data, ChatAck)

    def typing(self, is_typing: bool = True) -> bool:
        """Show or clear the typing indicator; dropped (returns False) while disconnected.

        The server lets it lapse after ``AG_TYPING_TTL_S`` (6 s): repeat it while typing.
        """
        return self.send_nowait(TypingRequest(data=TypingPayload(is_typing=is_typing)))

    async def history(
        self, limit: int = 50, before: str | None = None, before_seq: int | None = None
    ) -> HistoryPage:
        """The newest ``limit`` messages strictly before the cursor, oldest first."""
        query = HistoryQuery(limit=limit, before=before, before_seq=before_seq)
        page: HistoryPage = await self.send(HistoryRequest(data=query))
        return page

    # --- recovery ----------------------------------------------------------------------

    def _last_seq(self) -> int | None:
        self._resumed_from = self._sequencer.last_seq
        return self._resumed_from

    def _on_open(self) -> None:
        if self._resumed_from is not None:
            self._sequencer.begin_recovery()

    def _on_frame(self, frame: Frame) -> Iterable[Frame]:
        if isinstance(frame, MessageFrame):
            return self._sequencer.push(frame)
        if isinstance(frame, RecoveredFrame) and self._sequencer.recovering:
            if frame.data.truncated:
                self._gap_fill = self._spawn(self._fill_gap(frame))
                return ()
            return [*self._sequencer.end_recovery(), frame]
        return (frame,)

    def _on_disconnect(self) -> None:
        if self._gap_fill is not None:
            self._gap_fill.cancel()  # the next connection recovers from last_seq again
            self._gap_fill = None

    async def _fill_gap(self, recovered: RecoveredFrame) -> None:
        """Page backwards through ``history`` from the oldest held message to ``last_seq``."""
        floor = self._sequencer.last_seq
        cursor = self._sequencer.oldest_held()
        try:
            while True:
                page = await self.history(limit=self._page_size, before_seq=cursor)
                for message in page.messages:
                    self._sequencer.hold(MessageFrame(timestamp=message.timestamp, data=message))
                if not page.messages or not page.has_more:
                    break
                oldest = page.messages[0].seq
                if floor is not None and oldest <= floor + 1:
                    break
                cursor = oldest
        except AtomicGuideError as exc:
            # Deliver what we have rather than hold the room hostage; the gap stays.
            self._logger.warning("could not fill the chat gap after %s: %s", floor, exc)
        for message_frame in self._sequencer.end_recovery():
            self._deliver(message_frame)
        self._deliver(recovered)
        self._gap_fill = None
