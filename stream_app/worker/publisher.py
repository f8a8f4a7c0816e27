"""Kafka adapter for the worker's outputs: recommendations and dead letters, through Faust."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import faust
from faust.types import RecordMetadata

from stream_app.core.errors import InvalidEvent
from stream_app.core.events import Recommendations
from stream_app.worker import metrics
from stream_app.worker.ports import Publisher, RawEvent


class FaustPublisher(Publisher):
    """Sends outputs through Faust's producer and awaits their delivery in ``flush``."""

    def __init__(
        self, recommendations: faust.TopicT, dead_letters: faust.TopicT, max_value_bytes: int
    ) -> None:
        self._recommendations = recommendations
        self._dead_letters = dead_letters
        self._max_value_bytes = max_value_bytes
        # send() coroutines, each returning the future of its delivery.
        self._pending: list[Awaitable[Awaitable[RecordMetadata]]] = []

    def dead_letter(self, event: RawEvent, error: InvalidEvent) -> None:
        headers = {
            "streamrec-reason": error.reason.encode(),
            "streamrec-detail": error.detail.encode()[:1000],
            "streamrec-source": f"{event.topic}/{event.partition}/{event.offset}".encode(),
            "streamrec-original-bytes": str(len(event.value)).encode(),
        }
        # The original key and bytes travel untouched, so the event can be fixed and
        # replayed; only an oversized value is cut, or the broker could refuse the DLQ write.
        value = event.value[: self._max_value_bytes]
        self._pending.append(self._dead_letters.send(key=event.key, value=value, headers=headers))

    def recommendations(self, message: Recommendations) -> None:
        self._pending.append(
            self._recommendations.send(key=message.user_id.encode(), value=message.to_json())
        )

    def tombstone(self, user_id: str) -> None:
        self._pending.append(self._recommendations.send(key=user_id.encode(), value=None))

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        with metrics.KAFKA_PUBLISH.time():
            # send() coroutines queue the message; the futures they return resolve on
            # delivery. Awaited one by one, not gathered: gather makes a task of each.
            deliveries = [await send for send in pending]
            await asyncio.gather(*deliveries)
