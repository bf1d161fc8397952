"""NATS connection and log-replay helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from shared.config import Settings
from shared.logs import get_logger

__all__ = [
    "BatchRefused",
    "Conflict",
    "append_one",
    "DurablePull",
    "append_atomic",
    "connect",
    "connect_once",
    "NatsUnreachable",
    "replay",
    "stream_seq",
    "streams_exist",
]

log = get_logger(__name__)


async def connect(settings: Settings, name: str, **kwargs: Any) -> NATS:
    """Connect with unbounded reconnects: a NATS restart must not kill a service."""

    async def _disconnected() -> None:
        log.warning("nats disconnected")

    async def _reconnected() -> None:
        log.info("nats reconnected")

    async def _error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    options: dict[str, Any] = {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "disconnected_cb": _disconnected,
        "reconnected_cb": _reconnected,
        "error_cb": _error,
    }
    options.update(kwargs)  # callers (the CLI) may ask for no reconnects
    return await nats.connect(servers=settings.nats_servers, name=name, **options)


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


def stream_seq(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


async def replay(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    start_seq: int = 1,
    batch: int = 1000,
    fetch_timeout: float = 1.0,
) -> AsyncIterator[Msg]:
    """Yield every stored message on ``subject`` from ``start_seq`` up to the end of the log
    as it stands when the replay catches up (an ephemeral, unacked pull consumer)."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(start_seq, 1),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        mem_storage=True,
        max_ack_pending=-1,
    )
    psub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        info = await psub.consumer_info()
        pending = info.num_pending
        while pending:
            try:
                msgs = await psub.fetch(min(batch, pending), timeout=fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                info = await psub.consumer_info()
                pending = info.num_pending
                continue
            for msg in msgs:
                yield msg
            pending = msgs[-1].metadata.num_pending if msgs else pending
    finally:
        try:
            await psub.unsubscribe()
        except Exception:  # the consumer is ephemeral; it expires on its own
            pass


async def streams_exist(js: JetStreamContext) -> bool:
    from shared import subjects

    try:
        for name in (subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM):
            await js.stream_info(name)
    except Exception:
        return False
    return True


class DurablePull:
    """A durable pull consumer that heals itself.

    If the consumer or its stream disappears (a memory stream after a NATS restart, an operator's
    mistake), fetching re-creates the streams and the consumer with the same configuration instead
    of failing forever.
    """

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        durable: str,
        stream: str,
        config: ConsumerConfig,
        replicas: int = 1,
        dedup_window_s: float = 120.0,
    ) -> None:
        self.js = js
        self.subject = subject
        self.durable = durable
        self.stream = stream
        self.config = config
        self.replicas = replicas
        self.dedup_window_s = dedup_window_s
        self._sub: JetStreamContext.PullSubscription | None = None

    @classmethod
    def commands(
        cls, js: JetStreamContext, settings: Settings, subject: str, durable: str
    ) -> DurablePull:
        """A service's consumer of its commands on ``AG_CMDS``: explicit acks, redelivery after
        30 s for a command whose handler died."""
        from shared import subjects

        return cls(
            js,
            subject,
            durable=durable,
            stream=subjects.COMMANDS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=4096
            ),
            replicas=settings.stream_replicas,
            dedup_window_s=settings.dedup_window_s,
        )

    async def open(self) -> None:
        self._sub = await self.js.pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=self.config
        )

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        try:
            if self._sub is None:
                await self.open()
            assert self._sub is not None
            return await self._sub.fetch(batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("consumer fetch failed; re-creating", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)  # back off while NATS settles
            await self._heal()
            return []

    async def _heal(self) -> None:
        from shared.streams import ensure_streams

        try:
            await ensure_streams(self.js, self.replicas, self.dedup_window_s)
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
            self._sub = None
            await self.open()
        except Exception as exc:  # NATS still away: the next fetch tries again
            log.warning("consumer not re-created yet", extra={"error": repr(exc)})

    async def pending(self) -> int:
        if self._sub is None:
            return 0
        info = await self._sub.consumer_info()
        return int(info.num_pending or 0)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class Conflict(Exception):
    """``Nats-Expected-Last-Subject-Sequence`` did not hold: another writer got there first."""


async def append_one(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    msg_id: str,
    expected_last_subject_seq: int | None = None,
    timeout: float = 5.0,
) -> PubAck:
    """Append one event with ``Nats-Msg-Id`` (stored once) and, when given, the optimistic
    concurrency check of the subject's last sequence (raises ``Conflict``)."""
    headers = {"Nats-Msg-Id": msg_id}
    if expected_last_subject_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
    try:
        return await js.publish(subject, payload, headers=headers, timeout=timeout)
    except nats.js.errors.APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            raise Conflict from None
        raise


class BatchRefused(Exception):
    """JetStream refused an atomic batch as a whole (nothing of it was stored)."""

    def __init__(self, err_code: int, description: str) -> None:
        super().__init__(description)
        self.err_code = err_code


WRONG_LAST_SEQUENCE = 10071  # Nats-Expected-Last-Subject-Sequence did not hold
BATCH_DUPLICATE_ID = 10201  # a Nats-Msg-Id in the batch was already stored


async def append_atomic(
    nc: NATS,
    subject: str,
    items: list[tuple[str, bytes]],
    expected_last_subject_seq: int | None = None,
    timeout: float = 5.0,
) -> int:
    """Append ``(msg_id, payload)`` items to one subject as one atomic batch (nats-server 2.12+,
    stream ``allow_atomic``): all are stored, in order, or none. The expectation applies to the
    first message, so a single writer can append many events per round trip and still detect a
    competing writer. Returns the stream sequence of the first stored message.
    """
    if not items:
        raise ValueError("empty batch")
    batch_id = uuid.uuid4().hex
    last = len(items)
    for i, (msg_id, payload) in enumerate(items, start=1):
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i), "Nats-Msg-Id": msg_id}
        if i == 1 and expected_last_subject_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
        if i < last:
            await nc.publish(subject, payload, headers=headers)
            continue
        headers["Nats-Batch-Commit"] = "1"
        reply = await nc.request(subject, payload, headers=headers, timeout=timeout)
    ack = json.loads(reply.data)
    if "error" in ack:
        err = ack["error"]
        raise BatchRefused(int(err.get("err_code", 0)), str(err.get("description", "")))
    return int(ack["seq"]) - int(ack.get("count", last)) + 1
