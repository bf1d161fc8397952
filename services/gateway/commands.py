"""Commands from this gateway to the services that own aggregates, and their results.

``call`` stores a command durably in the work queue and waits for its result on this gateway's
reply subject. Every command carries a deadline (``AG_COMMAND_TIMEOUT_S``): the service drops a
command it finds past it and gives up its append before it, so when ``call`` gives up a little
after the deadline and answers ``unavailable``, that means "not applied" (docs/protocol.md), and a
client re-send with the same ``id`` is safe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from services.gateway import metrics
from services.gateway.connection import Authed
from shared import subjects
from shared.bus.port import Bus, Message, Subscription, Unavailable
from shared.config import Settings
from shared.errors import ServiceUnavailable, from_code
from shared.logs import get_logger
from shared.schemas.commands import CommandResult, Origin
from shared.schemas.wire import encode
from shared.timefmt import now_ms

__all__ = ["CommandClient", "Ticket"]

log = get_logger(__name__)
_result_decoder = msgspec.json.Decoder(CommandResult)
GRACE_S = 0.5  # past the deadline, the service has either answered or dropped the command


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a command needs from the client before it is built: its id, its deadline, and
    the reply address (gateway id)."""

    request_id: str
    deadline: int  # epoch ms
    gateway_id: str

    def origin(self, authed: Authed) -> Origin:
        """Where the command comes from, so its result finds the socket again."""
        return Origin(self.gateway_id, authed.id, authed.user_id, authed.user_name)


class CommandClient:
    def __init__(self, settings: Settings, bus: Bus, gateway_id: str) -> None:
        self.settings = settings
        self.bus = bus
        self.gateway_id = gateway_id
        self._pending: dict[str, asyncio.Future[CommandResult]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(
            subjects.gateway_replies(self.gateway_id), self._on_result
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for fut in self._pending.values():
            fut.cancel()

    def ticket(self) -> Ticket:
        timeout = self.settings.command_timeout_s
        return Ticket(uuid.uuid4().hex, now_ms() + int(timeout * 1000), self.gateway_id)

    async def call(
        self, subject: str, ticket: Ticket, command: msgspec.Struct, kind: str
    ) -> dict[str, Any]:
        """The command's ``ok`` result, or the service's refusal (a ``Refusal``); a service that
        did not answer by the deadline is ``ServiceUnavailable``, the command not applied."""
        timeout = self.settings.command_timeout_s
        fut = self._pending[ticket.request_id] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        try:
            await self.bus.submit(subject, encode(command), timeout=timeout)
            async with asyncio.timeout(timeout + GRACE_S):
                result = await fut
        except (TimeoutError, Unavailable):
            raise ServiceUnavailable(_unavailable(kind)) from None
        finally:
            self._pending.pop(ticket.request_id, None)
        metrics.COMMAND_LATENCY.labels(kind).observe(time.perf_counter() - started)
        if result.error:
            raise from_code(result.error, result.message, result.data)
        return result.ok or {}

    async def _on_result(self, msg: Message) -> None:
        try:
            result = _result_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable command result")
            return
        fut = self._pending.pop(result.requestId, None)
        if fut is not None and not fut.done():
            fut.set_result(result)


def _unavailable(kind: str) -> str:
    service = "chat" if kind.startswith("chat") else "collaboration"
    return f"the {service} service is unavailable; re-send later with the same id"
