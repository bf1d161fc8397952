"""Provisioning a store made before command partitions: one ``AG_CMDS`` on ``ag.cmd.>`` with a
durable per service. ``ensure_streams`` turns it into the partitioned chat stream, adds the
collaboration stream and the lease bucket, and removes the old durables (a work queue allows
no overlapping consumers); the event log is untouched."""

from __future__ import annotations

from typing import Any

import nats
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from ops.streams import ensure_streams
from shared import subjects


async def test_a_store_from_before_partitions_is_upgraded_in_place(nats_url: str) -> None:
    nc: Any = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=subjects.COMMANDS_STREAM,
                subjects=["ag.cmd.>"],
                storage=StorageType.MEMORY,
                retention=RetentionPolicy.WORK_QUEUE,
                discard=DiscardPolicy.OLD,
                max_age=3600.0,
            )
        )
        await js.add_stream(StreamConfig(name=subjects.EVENTS_STREAM, subjects=["ag.evt.>"]))
        await js.publish(subjects.chat_messages("r"), b"{}")
        for durable, f in (("chat", "ag.cmd.chat.>"), ("collab", "ag.cmd.collab.>")):
            config = ConsumerConfig(
                durable_name=durable, filter_subject=f, ack_policy=AckPolicy.EXPLICIT
            )
            await js.add_consumer(subjects.COMMANDS_STREAM, config)

        await ensure_streams(js)

        chat = await js.stream_info(subjects.COMMANDS_STREAM)
        assert chat.config.subjects == [subjects.CHAT_COMMANDS_ALL]
        assert chat.config.subject_transform is not None
        assert "partition(16,1)" in chat.config.subject_transform.dest
        assert await js.consumers_info(subjects.COMMANDS_STREAM) == []
        collab = await js.stream_info(subjects.COLLAB_COMMANDS_STREAM)
        assert collab.config.subjects == [subjects.COLLAB_COMMANDS_ALL]
        await js.key_value(subjects.LEASES_BUCKET)
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 1
        # and a command now lands in its partition, where its owner's consumer is
        await js.publish(subjects.chat_commands("course-1"), b"cmd")
        got = await js.get_msg(subjects.COMMANDS_STREAM, subject="ag.cmd.chat.10.course-1")
        assert got.data == b"cmd"
    finally:
        await nc.close()


async def test_a_services_heal_puts_back_what_is_missing_and_changes_nothing_else(
    nats_url: str,
) -> None:
    """A worker heals with its own settings, which are not the operator's: provisioned with a
    300 s duplicate window and 5 s leases, a worker configured for 60 s and 3 s (and, in a cluster,
    for one replica where the operator asked for three) must leave both as they are."""
    from shared.bus.nats import connect
    from shared.config import load_settings

    nc: Any = await nats.connect(nats_url)
    bus = await connect(
        load_settings({"AG_NATS_URL": nats_url, "AG_DEDUP_WINDOW_S": "60", "AG_LEASE_S": "3"}),
        "heal-test",
    )
    try:
        js = nc.jetstream()
        await ensure_streams(js, 1, 300.0, 16, 5.0)
        await js.delete_stream(subjects.COLLAB_COMMANDS_STREAM)  # as a restart loses memory streams

        await bus.restore_streams()

        events = await js.stream_info(subjects.EVENTS_STREAM)
        assert events.config.duplicate_window == 300.0
        leases = await js.stream_info("KV_" + subjects.LEASES_BUCKET)
        assert leases.config.max_age == 5.0
        collab = await js.stream_info(subjects.COLLAB_COMMANDS_STREAM)
        assert collab.config.subjects == [subjects.COLLAB_COMMANDS_ALL]
    finally:
        await bus.close()
        await nc.close()
