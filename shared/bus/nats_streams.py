"""The two JetStream streams: their configuration, provisioning and a description for operators."""

from __future__ import annotations

import contextlib
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.kv import KeyValue

from shared import subjects

__all__ = [
    "describe_streams",
    "ensure_streams",
    "kv_values",
    "leases_config",
    "snapshots_config",
    "stream_configs",
]


def _commands(
    name: str,
    subjects_: str,
    transform: tuple[str, str],
    partitions: int,
    replicas: int,
    dedup: float,
) -> StreamConfig:
    # Commands wait here for their service; handled ones are removed (work queue). A command
    # lives only until its deadline (AG_COMMAND_TIMEOUT_S): past it the gateway has answered
    # `unavailable` and the service drops it. So memory storage loses nothing a client was
    # promised, and spares a second fsync per message; the event log is what is durable.
    # The transform files each command under its aggregate's partition (NATS's own hash).
    return StreamConfig(
        name=name,
        subjects=[subjects_],
        storage=StorageType.MEMORY,
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.OLD,
        max_age=3600.0,
        num_replicas=replicas,
        duplicate_window=dedup,
        subject_transform=SubjectTransform(
            src=transform[0], dest=transform[1].format(n=partitions)
        ),
    )


def stream_configs(
    replicas: int = 1, dedup_window_s: float = 120.0, partitions: int = 16
) -> list[StreamConfig]:
    return [
        # The source of truth: kept forever, every projection rebuilds from it.
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_ALL],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=replicas,
            duplicate_window=dedup_window_s,
            allow_direct=True,
            allow_atomic=True,  # services append a batch of one aggregate's events at once
        ),
        _commands(
            subjects.COMMANDS_STREAM,
            subjects.CHAT_COMMANDS_ALL,
            subjects.CHAT_COMMANDS_TRANSFORM,
            partitions,
            replicas,
            dedup_window_s,
        ),
        _commands(
            subjects.COLLAB_COMMANDS_STREAM,
            subjects.COLLAB_COMMANDS_ALL,
            subjects.COLLAB_COMMANDS_TRANSFORM,
            partitions,
            replicas,
            dedup_window_s,
        ),
    ]


def leases_config(replicas: int = 1, lease_s: float = 3.0) -> KeyValueConfig:
    # Leases are renewed every fraction of lease_s: memory storage spares an fsync per renewal.
    # A NATS restart forgets them; owners then find their renewal refused and claim again.
    return KeyValueConfig(
        bucket=subjects.LEASES_BUCKET,
        history=1,
        ttl=lease_s,
        storage=StorageType.MEMORY,
        replicas=replicas,
    )


def snapshots_config(replicas: int = 1) -> KeyValueConfig:
    # A cache of the log (rebuilt from it when missing), kept on disk so a restart starts fast.
    return KeyValueConfig(
        bucket=subjects.SNAPSHOTS_BUCKET,
        history=1,
        storage=StorageType.FILE,
        replicas=replicas,
    )


async def ensure_streams(
    js: JetStreamContext,
    replicas: int = 1,
    dedup_window_s: float = 120.0,
    partitions: int = 16,
    lease_s: float = 3.0,
    *,
    update: bool = True,
) -> None:
    """Create the streams and the lease and snapshot buckets, and with ``update`` bring existing
    ones to this configuration (``provision``). Services heal with ``update=False``: they only
    put back what a restart lost, because their settings are not the operator's (a worker without
    AG_STREAM_REPLICAS would otherwise shrink an R3 stream to one replica).

    Before partitions, one durable per service consumed all of ``AG_CMDS``; a work queue allows
    no overlapping consumers, so provisioning removes those (commands only live until their
    deadline: a client re-sends what it was told was unavailable)."""
    if update:
        for old in ("chat", "collab"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(subjects.COMMANDS_STREAM, old)
    for cfg in stream_configs(replicas, dedup_window_s, partitions):
        assert cfg.name is not None
        try:
            await js.stream_info(cfg.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(cfg)
        else:
            if update:
                await js.update_stream(cfg)
    existed = await _ensure_bucket(js, leases_config(replicas, lease_s))
    if existed and update:  # the bucket's TTL is the lease time the workers renew against
        await _lease_ttl(js, lease_s)
    await _ensure_bucket(js, snapshots_config(replicas))


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> bool:
    """Create the KV bucket if it is missing; whether it was there."""
    try:
        await js.key_value(config.bucket)
        return True
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
        await js.create_key_value(config)
        return False


async def _lease_ttl(js: JetStreamContext, lease_s: float) -> None:
    info = await js.stream_info("KV_" + subjects.LEASES_BUCKET)
    if info.config.max_age != lease_s:
        info.config.max_age = lease_s
        await js.update_stream(info.config)


async def describe_streams(js: JetStreamContext) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    leases = "KV_" + subjects.LEASES_BUCKET
    for name in (
        subjects.EVENTS_STREAM,
        subjects.COMMANDS_STREAM,
        subjects.COLLAB_COMMANDS_STREAM,
        leases,
        "KV_" + subjects.SNAPSHOTS_BUCKET,
    ):
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            rows.append({"stream": name, "missing": True})
            continue
        consumers: list[dict[str, Any]] = []
        for c in await js.consumers_info(name):
            consumers.append(
                {
                    "name": c.name,
                    "pending": c.num_pending,
                    "ack_pending": c.num_ack_pending,
                    "delivered": c.delivered.stream_seq if c.delivered else 0,
                }
            )
        rows.append(
            {
                "stream": name,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_seq": info.state.first_seq,
                "last_seq": info.state.last_seq,
                "replicas": info.config.num_replicas,
                "consumers": consumers,
            }
        )
        if name == leases:
            rows[-1]["leases"] = await _lease_holders(js)
    return rows


async def _lease_holders(js: JetStreamContext) -> dict[str, str]:
    """Who holds which lease now (``chat.p.3`` -> worker id), in key order."""
    found = await kv_values(await js.key_value(subjects.LEASES_BUCKET), ">")
    return dict(sorted(found.items(), key=lambda kv: [_natural(t) for t in kv[0].split(".")]))


def _natural(token: str) -> tuple[int, int | str]:
    return (0, int(token)) if token.isdigit() else (1, token)


async def kv_values(kv: KeyValue, keys: str) -> dict[str, str]:
    """The live values of the keys matching ``keys`` (a watch ended after the initial values)."""
    watcher = await kv.watch(keys, ignore_deletes=True)
    found: dict[str, str] = {}
    try:
        while (entry := await watcher.updates(timeout=5.0)) is not None:  # type: ignore[no-untyped-call]
            if entry.value:
                found[entry.key] = entry.value.decode()
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return found
