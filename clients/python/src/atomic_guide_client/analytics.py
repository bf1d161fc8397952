"""Analytics client (``/api/analytics/ws``): live metrics of one context."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

from ._dispatch import Frame
from .config import ConnectionOptions
from .connection import Connection, TokenProvider
from .errors import AtomicGuideError
from .frames import (
    MetricUpdateFrame,
    SubscribedFrame,
    SubscribeRequest,
    UnsubscribedFrame,
    UnsubscribeRequest,
)
from .payloads import MetricsPayload, MetricUpdate

__all__ = ["METRICS", "AnalyticsClient"]

#: The metrics docs/protocol.md defines.
METRICS = ("engagement", "performance", "activity")


class AnalyticsClient(Connection):
    """Metric subscriptions of one context (``instructor``/``admin`` tokens only: 4403).

    ``latest`` always holds the newest ``metric_update`` of every subscribed metric; the
    updates are also delivered as frames. Subscriptions survive reconnects: the client
    subscribes again on every new connection, and the server answers with fresh values.
    """

    path = "/api/analytics/ws"

    def __init__(
        self,
        url: str,
        context_id: str,
        token_provider: TokenProvider | str,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        super().__init__(url, context_id, token_provider, **options)
        self._subscriptions: set[str] = set()
        self._latest: dict[str, MetricUpdate] = {}

    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._subscriptions)

    @property
    def latest(self) -> Mapping[str, MetricUpdate]:
        """Newest update per subscribed metric."""
        return dict(self._latest)

    def value(self, metric: str) -> dict[str, Any] | None:
        """The newest value object of ``metric`` (e.g. ``{"onlineUsers": 3, ...}``)."""
        update = self._latest.get(metric)
        return None if update is None else update.value

    async def subscribe(self, metrics: Iterable[str]) -> list[str]:
        """Subscribe; returns the metrics the server confirmed. Current values follow."""
        data: MetricsPayload = await self.send(SubscribeRequest(data=_payload(metrics)))
        return list(data.metrics)

    async def unsubscribe(self, metrics: Iterable[str]) -> list[str]:
        data: MetricsPayload = await self.send(UnsubscribeRequest(data=_payload(metrics)))
        return list(data.metrics)

    def _on_open(self) -> None:
        if not self._subscriptions:
            return
        payload = MetricsPayload(metrics=sorted(self._subscriptions))
        future = self._request(SubscribeRequest(data=payload), scoped=True, counted=False)
        future.add_done_callback(self._resubscribed)

    def _resubscribed(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and isinstance(future.exception(), AtomicGuideError):
            self._logger.warning("re-subscribing failed: %s", future.exception())

    def _on_frame(self, frame: Frame) -> Iterable[Frame]:
        # Bookkeeping happens here, in arrival order, not when a future resumes later.
        if isinstance(frame, SubscribedFrame):
            self._subscriptions.update(frame.data.metrics)
        elif isinstance(frame, UnsubscribedFrame):
            self._subscriptions.difference_update(frame.data.metrics)
            for metric in frame.data.metrics:
                self._latest.pop(metric, None)
        elif isinstance(frame, MetricUpdateFrame):
            if frame.data.metric not in self._subscriptions:
                return ()  # a late update for something just unsubscribed
            self._latest[frame.data.metric] = frame.data
        return (frame,)


def _payload(metrics: Iterable[str]) -> MetricsPayload:
    unique = list(dict.fromkeys(metrics))
    if not unique:
        raise ValueError("at least one metric is required")
    return MetricsPayload(metrics=unique)
