"""The bus over NATS JetStream (this module and its ``nats_*`` parts are the only ones that
import ``nats``: streams, the command queue, the log tail).

- The event log is the stream ``AG_EVENTS``; an append carries ``Nats-Msg-Id`` (stored once in
  the stream's duplicate window) and, when asked, ``Nats-Expected-Last-Subject-Sequence``.
  Batches use JetStream's atomic batch publish (nats-server 2.12+, ``allow_atomic``).
- Reads are batched direct gets (nats-server 2.11+): a round trip per 256 entries, no consumer
  to create or clean up; the last entry of many subjects is one ``multi_last`` request.
- Commands wait in the work-queue stream ``AG_CMDS`` for a durable pull consumer with explicit
  acks; a consumer (or the in-memory stream) lost to a NATS restart is re-created on the next
  fetch.
- A log tail is a pull consumer without acks, read on a connection of its own at the speed of
  the socket (``nats_tail``).
- Connections reconnect forever (a NATS restart must not end a service); ``connect_once`` is one
  bounded attempt for command-line tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared import subjects
from shared.bus.chain import chain
from shared.bus.nats_commands import CommandQueue
from shared.bus.nats_direct import DirectGets
from shared.bus.nats_flush import connect as coalescing_connect
from shared.bus.nats_leases import NatsLeases
from shared.bus.nats_streams import describe_streams, ensure_streams, stream_configs
from shared.bus.nats_tail import Tail
from shared.bus.port import (
    Appended,
    Bus,
    Conflict,
    Entry,
    Handler,
    NoResponders,
    Unavailable,
)
from shared.config import Settings
from shared.logs import get_logger

__all__ = [
    "NatsBus",
    "NatsUnreachable",
    "connect",
    "connect_once",
    "describe_streams",
    "ensure_streams",
    "stream_configs",
]

log = get_logger(__name__)

WRONG_LAST_SEQUENCE = 10071  # Nats-Expected-Last-Subject-Sequence did not hold
BATCH_DUPLICATE_ID = 10201  # a Nats-Msg-Id in the batch was already stored
_GET_BATCH = 256  # entries per batched direct get
_BROKEN = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)
_SUBJECT_PAGES = 1_000  # of 100,000 subjects each (log_subjects)


# --- connections -----------------------------------------------------------------------------
async def connect(settings: Settings, name: str, **kwargs: Any) -> NatsBus:
    """A bus on a connection that reconnects forever: a NATS restart must not end a service."""
    bus = NatsBus(settings)

    async def _disconnected() -> None:
        log.warning("nats disconnected")

    async def _error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    options: dict[str, Any] = {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "disconnected_cb": _disconnected,
        "reconnected_cb": bus._reconnected,
        "error_cb": _error,
    }
    options.update(kwargs)
    bus.nc = await coalescing_connect(servers=settings.nats_servers, name=name, **options)
    return bus


class NatsUnreachable(ConnectionError):
    """No NATS server answered at ``url`` (a tool that needs it says so and stops)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach NATS at {url}: {reason}")
        self.url = url


async def connect_once(url: str, name: str, timeout: float = 3.0) -> NATS:
    """One connection attempt per server, no reconnects, the whole attempt bounded by
    ``timeout``: what a command-line tool wants (a stale URL fails in seconds, not never).

    nats-py's own "no reconnect" options still retry the initial connect forever, so the bound
    is ours.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]

    async def _quiet(*_: Any) -> None:
        return None

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name=name,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                connect_timeout=min(timeout, 2.0),
                error_cb=_quiet,
                disconnected_cb=_quiet,
                closed_cb=_quiet,
            ),
            timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        if isinstance(exc, TimeoutError):
            reason = "no answer"
        elif isinstance(exc, nats.errors.NoServersError):
            reason = "nothing answers there"
        else:
            reason = str(exc) or type(exc).__name__
        raise NatsUnreachable(url, reason) from None


# --- the bus ---------------------------------------------------------------------------------
class _Message:
    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> Mapping[str, str]:
        return self._msg.headers or {}

    @property
    def reply(self) -> str | None:
        return self._msg.reply or None

    async def respond(self, data: bytes) -> None:
        if self._msg.reply:
            await self._msg.respond(data)


class _Subscription:
    __slots__ = ("_sub",)

    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


class NatsBus(Bus):
    def __init__(self, settings: Settings, nc: NATS | None = None) -> None:
        self.settings = settings
        self._nc = nc
        self._js: JetStreamContext | None = None
        self._reconnect: list[Callable[[], Awaitable[None]]] = []
        self._leases: NatsLeases | None = None
        self._direct: DirectGets | None = None
        self._snapshots_kv: KeyValue | None = None

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "not connected"
        return self._nc

    @nc.setter
    def nc(self, value: NATS) -> None:
        self._nc = value
        self._js = None
        self._direct = None
        self._snapshots_kv = None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._reconnect.append(callback)

    async def _reconnected(self) -> None:
        log.info("nats reconnected")
        for cb in self._reconnect:
            try:
                await cb()
            except Exception:
                log.exception("reconnect callback failed")

    async def restore_streams(self) -> None:
        """Put back streams or the lease bucket a NATS restart lost; never changes existing ones
        (that is ``provision``'s job, with the operator's settings)."""
        st = self.settings
        await ensure_streams(
            self.js, st.stream_replicas, st.dedup_window_s, st.partitions, st.lease_s, update=False
        )

    async def streams_exist(self) -> bool:
        try:
            for name in (
                subjects.EVENTS_STREAM,
                subjects.COMMANDS_STREAM,
                subjects.COLLAB_COMMANDS_STREAM,
            ):
                await self.js.stream_info(name)
        except Exception:
            return False
        return True

    # --- the event log ----------------------------------------------------------------------
    async def append(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> Appended:
        headers = {"Nats-Msg-Id": msg_id}
        if expect_last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect_last)
        try:
            ack = await self.js.publish(subject, data, headers=headers, timeout=timeout)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Conflict(exc.description or "wrong last sequence") from None
            raise Unavailable(repr(exc)) from None
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None
        return Appended(int(ack.seq), bool(ack.duplicate))

    async def append_batch(
        self,
        subject: str,
        items: Sequence[tuple[str, bytes]],
        *,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> int:
        if not items:
            raise ValueError("empty batch")
        if len(items) == 1:  # one message is atomic anyway, and a plain publish costs less
            msg_id, data = items[0]
            done = await self.append(
                subject, data, msg_id=msg_id, expect_last=expect_last, timeout=timeout
            )
            if done.duplicate:
                raise Conflict("the message id is already stored")
            return done.seq
        batch_id = uuid.uuid4().hex
        last = len(items)
        try:
            for i, (msg_id, data) in enumerate(items, start=1):
                headers = {
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(i),
                    "Nats-Msg-Id": msg_id,
                }
                if i == 1 and expect_last is not None:
                    headers["Nats-Expected-Last-Subject-Sequence"] = str(expect_last)
                if i < last:
                    await self.nc.publish(subject, data, headers=headers)
                    continue
                headers["Nats-Batch-Commit"] = "1"
                reply = await self.nc.request(subject, data, headers=headers, timeout=timeout)
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None
        ack = json.loads(reply.data)
        if "error" in ack:
            err = ack["error"]
            if int(err.get("err_code", 0)) in (WRONG_LAST_SEQUENCE, BATCH_DUPLICATE_ID):
                raise Conflict(str(err.get("description", "")))
            raise Unavailable(f"batch refused: {err}")
        return int(ack["seq"]) - int(ack.get("count", last)) + 1

    async def append_chain(
        self,
        subject: str,
        items: Sequence[tuple[str, bytes]],
        *,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> list[int]:
        return await chain(self, subject, items, expect_last, timeout)

    async def read(
        self, subject: str, start: int = 1, limit: int = 1_000_000, *, timeout: float = 5.0
    ) -> list[Entry]:
        out: list[Entry] = []
        seq = max(start, 1)
        while len(out) < limit:
            want = min(_GET_BATCH, limit - len(out))
            req = {"seq": seq, "next_by_subj": subject, "batch": want}
            got, pending = await self._direct_batch(req, timeout)
            out.extend(got)
            if not got or not pending:
                break
            seq = got[-1].seq + 1
        return out

    async def last(self, subjects_: Sequence[str], *, timeout: float = 5.0) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        wanted = list(subjects_)
        for i in range(0, len(wanted), _GET_BATCH):
            chunk = wanted[i : i + _GET_BATCH]
            req = {"multi_last": chunk, "batch": len(chunk)}
            got, _ = await self._direct_batch(req, timeout)
            for entry in got:
                found[entry.subject] = entry
        return found

    async def _direct_batch(self, req: dict[str, Any], timeout: float) -> tuple[list[Entry], int]:
        """One batched direct get: the entries, and how many more match after them."""
        if self._direct is None:
            self._direct = DirectGets(self.nc, subjects.EVENTS_STREAM)
        try:
            return await self._direct.get(req, timeout)
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None

    async def log_end(self) -> int:
        try:
            info = await self.js.stream_info(subjects.EVENTS_STREAM)
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None
        return int(info.state.last_seq)

    async def log_subjects(self, pattern: str) -> dict[str, int]:
        # The stream info request with a subject filter, page by page: nats-server answers at
        # most 100,000 subjects at a time (nats-py's stream_info asks for the first page only).
        found: dict[str, int] = {}
        api = f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}"
        offset = 0
        for _ in range(_SUBJECT_PAGES):
            req = json.dumps({"subjects_filter": pattern, "offset": offset}).encode()
            try:
                reply = json.loads((await self.nc.request(api, req, timeout=10.0)).data)
            except _BROKEN as exc:
                raise Unavailable(repr(exc)) from None
            if "error" in reply:
                raise Unavailable(str(reply["error"]))
            page = reply.get("state", {}).get("subjects") or {}
            found.update(page)
            # By position in the server's sorted list: a subject added meanwhile shifts the
            # rest by one (seen twice, harmless), so count positions, not what was found.
            offset += len(page)
            if not page or offset >= int(reply.get("total", 0)):
                return found
        raise Unavailable(f"more than {_SUBJECT_PAGES} pages of subjects on {pattern}")

    async def _snapshots(self) -> KeyValue:
        # Looked up once (each lookup is a stream info request); a bucket deleted since is
        # looked up again after the error it causes.
        if self._snapshots_kv is None:
            self._snapshots_kv = await self.js.key_value(subjects.SNAPSHOTS_BUCKET)
        return self._snapshots_kv

    async def snapshot(self, key: str) -> bytes | None:
        try:
            entry = await (await self._snapshots()).get(key)
        except nats.js.errors.KeyNotFoundError:
            return None  # none yet: read the log
        except nats.js.errors.BucketNotFoundError:
            self._snapshots_kv = None
            return None  # a deployment from before snapshots: read the log
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None
        return entry.value

    async def save_snapshot(self, key: str, data: bytes) -> None:
        try:
            try:
                kv = await self._snapshots()
            except nats.js.errors.BucketNotFoundError:  # provisioned before snapshots existed
                await self.restore_streams()
                kv = await self._snapshots()
            await kv.put(key, data)
        except _BROKEN as exc:
            self._snapshots_kv = None
            raise Unavailable(repr(exc)) from None

    def tail(self, subjects_: str, start: int, name: str | None = None) -> Tail:
        return Tail(self, subjects_, start, name)

    # --- commands ---------------------------------------------------------------------------
    async def submit(self, subject: str, data: bytes, *, timeout: float = 5.0) -> None:
        try:
            await self.js.publish(subject, data, timeout=timeout)
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None

    def commands(self, subjects_: str, durable: str) -> CommandQueue:
        return CommandQueue(self, subjects_, durable)

    # --- leases -----------------------------------------------------------------------------
    def leases(self) -> NatsLeases:
        if self._leases is None:
            self._leases = NatsLeases(self)
        return self._leases

    # --- live messages ----------------------------------------------------------------------
    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        try:
            await self.nc.publish(subject, data, headers=dict(headers) if headers else None)
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None

    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str | None = None
    ) -> _Subscription:
        async def deliver(msg: Msg) -> None:
            await handler(_Message(msg))

        sub = await self.nc.subscribe(subject, queue or "", cb=deliver)
        return _Subscription(sub)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        try:
            msg = await self.nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no responders on {subject}") from None
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None
        return bytes(msg.data)

    async def flush(self) -> None:
        try:
            await self.nc.flush()
        except _BROKEN as exc:
            raise Unavailable(repr(exc)) from None

    async def close(self) -> None:
        if self._nc is None:
            return
        try:
            await asyncio.wait_for(self._nc.drain(), 5)
        except Exception as exc:  # stopping anyway: do not hang on NATS
            log.warning("nats drain did not finish", extra={"error": repr(exc)})
            await self._nc.close()
