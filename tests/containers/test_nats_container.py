"""The container NATS the integration suite can run on: JetStream, file store, loopback only."""

from __future__ import annotations

import json
import urllib.request

import nats
import pytest
from nats.js.api import StorageType

from ops.streams import ensure_streams
from shared import subjects
from tests.containers.plugin import ContainerNats

pytestmark = pytest.mark.containers


async def test_container_nats_serves_jetstream_with_the_project_streams(
    nats_container: ContainerNats,
) -> None:
    assert nats_container.url.startswith("nats://127.0.0.1:")
    nc = await nats.connect(nats_container.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        info = await js.stream_info(subjects.EVENTS_STREAM)
        assert info.config.storage == StorageType.FILE
    finally:
        await nc.close()
    with urllib.request.urlopen(nats_container.monitor_url + "/jsz", timeout=5) as resp:
        jsz = json.load(resp)
    assert jsz["config"]["store_dir"].startswith("/data")
    assert jsz["config"]["sync_interval"] > 0 or jsz["config"].get("sync_always") is True
