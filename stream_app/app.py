"""The Faust application: topics, the interactions agent and its wiring to the adapters."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import NoReturn

import faust
import redis.asyncio as aioredis

from stream_app import faust_kafka, metrics, web
from stream_app.agents import InteractionProcessor, ItemProcessor, RawEvent
from stream_app.catalog import AsyncCatalogWriter
from stream_app.catalog import redis_client as catalog_redis_client
from stream_app.config import DEVELOPMENT_USER_ID_KEY, Settings
from stream_app.errors import DependencyError, InvalidEvent, RedisUnavailable
from stream_app.events import Recommendations
from stream_app.history import HistoryStore
from stream_app.inference import TritonRecommender
from stream_app.popularity import Popularity
from stream_app.privacy import Pseudonymiser
from stream_app.security import faust_credentials

logger = logging.getLogger(__name__)

COVERAGE_INTERVAL_S = 10.0
LAG_INTERVAL_S = 5.0
PRODUCER_BATCH_BYTES = 256 * 1024
PRODUCER_LINGER_S = 0.005
"""Without a linger aiokafka sends whatever is queued as soon as it can, so a batch's
lists left in many small requests: at 1,600 events/s the local broker spent 0.19 ms of
CPU per event on them, against 0.09 ms with 5 ms (bench/results/pipeline)."""


class FaustPublisher:
    """Sends outputs through Faust's producer and awaits their delivery in ``flush``."""

    def __init__(
        self, recommendations: faust.TopicT, dead_letters: faust.TopicT, max_value_bytes: int
    ) -> None:
        self._recommendations = recommendations
        self._dead_letters = dead_letters
        self._max_value_bytes = max_value_bytes
        self._pending: list = []

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

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        with metrics.KAFKA_PUBLISH.time():
            # send() coroutines queue the message; the futures they return resolve on
            # delivery. Awaited one by one, not gathered: gather makes a task of each.
            deliveries = [await send for send in pending]
            await asyncio.gather(*deliveries)


def create_app(settings: Settings) -> faust.App:
    kafka = settings.kafka
    app = faust_kafka.App(
        kafka.consumer_group,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        broker=[f"kafka://{host}" for host in kafka.bootstrap.split(",")],
        topic_partitions=kafka.partitions,
        web_host=settings.worker.web_host,
        web_port=settings.worker.web_port,
        datadir=settings.worker.data_dir,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=min(1.0, kafka.session_timeout_s / 3),
        broker_rebalance_timeout=kafka.session_timeout_s,
        broker_max_poll_interval=kafka.max_poll_interval_s,
        producer_acks=-1,
        # aiokafka makes a send wait for a round trip whenever a partition's batch is full:
        # at the 16 KiB default that is every ~12 lists. One batch of lists fits in this.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_linger=PRODUCER_LINGER_S,
        broker_credentials=faust_credentials(kafka),
        web_in_thread=False,
        # No leader election: nothing here runs on the leader only, and the election
        # topic would be one more topic to create (permissions) and to fetch.
        topic_disable_leader=True,
    )

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    interactions = raw_topic(kafka.interactions_topic)
    recommendations = raw_topic(kafka.recommendations_topic)
    interactions_dlq = raw_topic(kafka.interactions_topic + kafka.dlq_suffix)
    items = raw_topic(kafka.items_topic)
    items_dlq = raw_topic(kafka.items_topic + kafka.dlq_suffix)

    redis_client = catalog_redis_client(settings, aioredis.Redis)
    history = HistoryStore(
        redis_client,
        settings.redis.key_prefix,
        settings.redis.history_length,
        settings.redis.dedup_window,
        settings.redis.user_ttl_s,
        settings.policy.purchased_max,
    )
    policy = settings.policy
    popularity = Popularity(
        redis_client,
        settings.redis.key_prefix,
        policy.trending_half_life_s,
        policy.trending_max_items,
        policy.trending_refresh_s,
        policy.coverage_window_s,
    )
    recommender = TritonRecommender(
        settings.triton.url,
        settings.triton.recommender_model,
        settings.triton.embedder_model,
        settings.triton.timeout_s,
    )
    catalog = AsyncCatalogWriter(redis_client, settings.redis.key_prefix)
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    if settings.privacy.user_id_key.get_secret_value() == DEVELOPMENT_USER_ID_KEY:
        logger.warning(
            "user ids are pseudonymised with the built-in development key: set"
            " STREAMREC_PRIVACY__USER_ID_KEY to a secret in production"
        )
    web.register(app, history, redis_client, recommender, pseudonym)
    worker = settings.worker
    batch_window_s = worker.batch_window_ms / 1000

    async def consume(stream: faust.StreamT, processor) -> None:
        async for events in stream.take_events(worker.batch_max_events, within=batch_window_s):
            # take_events acknowledges the batch only after this block returns, so the
            # offsets Faust commits never run ahead of written outputs.
            started = time.perf_counter()
            batch = [_raw(e) for e in events]
            outcome = await _process_or_exit(processor, batch)
            logger.debug(
                'batch topic="%s" events=%d dlq=%d duplicates=%d published=%d seconds=%.3f',
                events[0].message.topic,
                outcome.consumed,
                outcome.dead_lettered,
                outcome.duplicates,
                outcome.published,
                time.perf_counter() - started,
            )

    @app.agent(interactions, name="interactions")
    async def process_interactions(stream: faust.StreamT) -> None:
        await _check(recommender)
        processor = InteractionProcessor(
            settings,
            history,
            recommender,
            catalog,
            popularity,
            FaustPublisher(recommendations, interactions_dlq, worker.max_event_bytes),
        )
        await consume(stream, processor)

    lag_labels: set[tuple[str, str]] = set()

    @app.timer(interval=LAG_INTERVAL_S)
    async def measure_lag() -> None:
        """Lag of the input partitions this worker owns (dashboards, alerts, autoscaling)."""
        inputs = (kafka.interactions_topic, kafka.items_topic)
        owned = [tp for tp in app.consumer.assignment() if tp.topic in inputs]
        try:
            ends = await app.consumer.highwaters(*owned) if owned else {}
        except Exception as exc:  # noqa: BLE001  (a metric must never stop the worker)
            logger.warning('consumer lag not measured error="%s"', exc)
            return
        current = set()
        for tp in owned:
            # Faust keeps the offset it last committed per partition (None: none yet).
            committed = app.consumer._committed_offset.get(tp) or 0
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, ends.get(tp, committed) - committed))
            current.add(labels)
        for labels in lag_labels - current:  # partitions moved to another worker
            metrics.CONSUMER_LAG.remove(*labels)
        lag_labels.clear()
        lag_labels.update(current)

    @app.timer(interval=COVERAGE_INTERVAL_S)
    async def measure_coverage() -> None:
        try:
            distinct, catalog_size = await popularity.coverage()
        except RedisUnavailable as exc:
            logger.warning('coverage not measured error="%s"', exc)
            return
        metrics.COVERAGE_ITEMS.set(distinct)
        # The sketch still counts items removed since: never report more than everything.
        metrics.COVERAGE_RATIO.set(min(1.0, distinct / catalog_size) if catalog_size else 0.0)

    @app.agent(items, name="items")
    async def process_items(stream: faust.StreamT) -> None:
        await _check(recommender)
        processor = ItemProcessor(
            settings,
            catalog,
            recommender,
            FaustPublisher(recommendations, items_dlq, worker.max_event_bytes),
        )
        await consume(stream, processor)

    return app


async def _check(recommender: TritonRecommender) -> None:
    """Say at start-up whether Triton is there; never wait for it: while it is away the
    breaker degrades lists to trending and item upserts are retried."""
    try:
        await recommender.connect()
    except DependencyError as exc:
        logger.warning('Triton not ready at start-up error="%s": lists degraded until it is', exc)


async def _process_or_exit(processor, batch: list[RawEvent]):
    """Process a batch; if the agent is cancelled half way (shutdown), finish it first.

    Faust acknowledges a batch when its block ends, even by cancellation, and commits
    what was acknowledged on the way out: a batch cut short would be committed undone.
    So the batch runs shielded to its end; how long that may take is bounded by
    :class:`GracefulWorker`'s SIGTERM deadline, which exits without any commit.
    """
    task = asyncio.ensure_future(processor.process(batch))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        logger.info("stopping: finishing the in-flight batch events=%d", len(batch))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            exit_uncommitted("cancelled twice in the middle of a batch")
        logger.info("in-flight batch finished; it is committed on the way out")
        raise


def exit_uncommitted(why: str) -> NoReturn:
    """End the process now, committing nothing: the next worker reads the batch again."""
    logger.error("%s: exiting without committing", why)
    logging.shutdown()
    os._exit(75)  # EX_TEMPFAIL


class GracefulWorker(faust.Worker):
    """A faust.Worker whose SIGTERM stop has a deadline.

    On SIGTERM Faust waits for every event in flight to be acknowledged, then commits
    and exits: with Redis down that wait has no end, and Kubernetes would SIGKILL the pod
    anyway. Past ``grace_s`` this exits uncommitted instead (redelivery is idempotent).
    """

    def __init__(self, app: faust.App, grace_s: float, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._grace_s = grace_s

    def _on_sigterm(self) -> None:
        why = f"not stopped {self._grace_s:.0f} s after SIGTERM"
        watchdog = threading.Timer(self._grace_s, exit_uncommitted, args=(why,))
        watchdog.daemon = True
        watchdog.start()
        super()._on_sigterm()


def _raw(event: faust.EventT) -> RawEvent:
    message = event.message
    return RawEvent(
        key=message.key if isinstance(message.key, bytes | None) else bytes(message.key),
        value=message.value if isinstance(message.value, bytes) else bytes(message.value or b""),
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=message.timestamp,
    )
