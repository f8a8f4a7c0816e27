"""The floor of ``streamrec bench``: the worker's broker and Kafka client doing only what no
recommender can skip, so StreamRec's rate can be read as a share of it.

    python -m bench.floor      # settings from STREAMREC_*, like `streamrec worker`

A Faust app with the worker's options (``stream_app.worker.app.app_options``) and one agent
on the interactions topic. It takes batches as the worker does (``take_events``, the same
size and window), parses each event with the worker's parser, makes one list of 10 items
for each user's last event of the batch (as the worker does), serialises it with the
worker's ``Recommendations.to_json``, sends it through the worker's publisher and waits
for delivery before the batch is acknowledged and its offsets committed. No Redis, no
Triton, no policy. ``/readyz`` answers 200 once it has partitions.
"""

from __future__ import annotations

import time
from typing import cast

import faust
from faust.web import Request, Response, View

from stream_app.core.events import Recommendations, RecommendedItem, parse_interaction
from stream_app.core.settings import Settings, load_settings
from stream_app.worker.app import app_options, use_event_loop
from stream_app.worker.faust_internals import App, GracefulWorker
from stream_app.worker.publisher import FaustPublisher

LIST = tuple(
    RecommendedItem(str(i), 1.0 - i / 10, "personal", "because you watched something", "1")
    for i in range(1, 11)
)


def create_floor_app(settings: Settings) -> faust.App:
    kafka, worker = settings.kafka, settings.worker
    app = App(kafka.consumer_group, **app_options(settings))

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    interactions = raw_topic(kafka.interactions_topic)
    publisher = FaustPublisher(
        raw_topic(kafka.recommendations_topic),
        raw_topic(kafka.interactions_topic + kafka.dlq_suffix),
        worker.max_event_bytes,
    )

    @app.agent(interactions, name="floor")
    async def floor(stream: faust.StreamT) -> None:
        batches = cast(faust.Stream, stream).take_events
        async for events in batches(worker.batch_max_events, within=worker.batch_window_ms / 1000):
            now = time.time()
            last = {}
            for event in events:
                parsed = parse_interaction(
                    event.message.value,
                    max_bytes=worker.max_event_bytes,
                    now=now,
                    max_future_skew_s=worker.max_future_skew_s,
                    arrival=event.message.offset,
                )
                last[parsed.user_id] = parsed
            for user_id, trigger in last.items():
                publisher.recommendations(
                    Recommendations(user_id, LIST, "floor", trigger.event_id, trigger.ts, now)
                )
            await publisher.flush()

    @app.page("/readyz")
    async def readyz(self: View, request: Request) -> Response:
        ready = bool(app.consumer.assignment())
        return self.json({"ready": ready}, status=200 if ready else 503)

    return app


def main() -> None:
    settings = load_settings()
    use_event_loop(settings.worker.event_loop)  # the same loop as the workers it is a floor for
    GracefulWorker(
        create_floor_app(settings),
        settings.worker.shutdown_grace_s,
        loglevel=settings.log_level.lower(),
        quiet=True,
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
