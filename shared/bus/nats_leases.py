"""Leases over NATS: a JetStream KV bucket (``AG_LEASES``) whose TTL is the lease time.

``create`` succeeds only on a free key, ``update`` only at the expected revision, and a key not
renewed within the TTL disappears: that is the whole lease protocol, kept by the server (on a
cluster, replicated by Raft), so there is no coordinator of our own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from shared import subjects
from shared.bus.nats_streams import kv_values
from shared.bus.port import Unavailable

if TYPE_CHECKING:
    from shared.bus.nats import NatsBus

__all__ = ["NatsLeases"]

_LOST = (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError)
_BROKEN = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


class NatsLeases:
    def __init__(self, bus: NatsBus) -> None:
        self.bus = bus
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.bus.js.key_value(subjects.LEASES_BUCKET)
            except _BROKEN:
                await self.bus.restore_streams()  # a memory bucket does not survive a restart
                self._kv = await self.bus.js.key_value(subjects.LEASES_BUCKET)
        return self._kv

    async def claim(self, key: str, holder: str) -> int | None:
        try:
            kv = await self._bucket()
            try:
                return int(await kv.create(key, holder.encode()))
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await kv.get(key)
                if entry.value != holder.encode() or entry.revision is None:
                    return None
                return int(await kv.update(key, holder.encode(), last=entry.revision))
        except _LOST:
            return None
        except _BROKEN as exc:
            self._kv = None
            raise Unavailable(repr(exc)) from None

    async def renew(self, key: str, holder: str, revision: int) -> int | None:
        try:
            kv = await self._bucket()
            return int(await kv.update(key, holder.encode(), last=revision))
        except _LOST:
            return None
        except _BROKEN as exc:
            self._kv = None
            raise Unavailable(repr(exc)) from None

    async def release(self, key: str, revision: int) -> None:
        try:
            kv = await self._bucket()
            await kv.delete(key, last=revision)
        except _LOST:
            return
        except _BROKEN as exc:
            self._kv = None
            raise Unavailable(repr(exc)) from None

    async def holders(self, prefix: str) -> dict[str, str]:
        try:
            return await kv_values(await self._bucket(), prefix + ">")
        except _BROKEN as exc:
            self._kv = None
            raise Unavailable(repr(exc)) from None
