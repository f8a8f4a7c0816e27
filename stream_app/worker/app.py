"""The Faust application: topics, agents and timers, wired to the adapters; and the
worker process that runs it (``streamrec worker``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import cast

import faust
import uvloop

from stream_app.core.errors import DependencyError, RedisUnavailable
from stream_app.core.experiments import Experiment
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import DEVELOPMENT_USER_ID_KEY, Settings
from stream_app.worker import metrics, web
from stream_app.worker.catalog import RedisCatalog
from stream_app.worker.connections import check_kafka_login, faust_credentials, redis_client
from stream_app.worker.erasure import ControlProcessor
from stream_app.worker.experiment_store import RedisExperimentStore
from stream_app.worker.faust_internals import App, GracefulWorker, committed_offsets
from stream_app.worker.history import RedisHistory
from stream_app.worker.popularity import RedisPopularity
from stream_app.worker.ports import RawEvent
from stream_app.worker.processors import (
    BatchOutcome,
    InteractionProcessor,
    ItemProcessor,
    Processor,
)
from stream_app.worker.publisher import FaustPublisher
from stream_app.worker.shutdown import finish_even_if_cancelled
from stream_app.worker.triton_client import TritonRecommender

logger = logging.getLogger(__name__)

COVERAGE_INTERVAL_S = 10.0
LAG_INTERVAL_S = 5.0
PRODUCER_BATCH_BYTES = 256 * 1024
PRODUCER_LINGER_S = 0.005
"""Without a linger aiokafka sends whatever is queued as soon as it can, so a batch's
lists left in many small requests: at 1,600 events/s the local broker spent 0.19 ms of
CPU per event on them, against 0.09 ms with 5 ms (bench/results/pipeline)."""


def app_options(settings: Settings) -> dict:
    """The Faust App's options from the settings (also the floor's in ``bench.floor``)."""
    kafka = settings.kafka
    return dict(
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


def create_app(settings: Settings) -> faust.App:
    kafka = settings.kafka
    app = App(kafka.consumer_group, **app_options(settings))

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    # Erasure requests share the interactions agent: a batch's forgets run before its
    # interactions, and never beside another batch of the same partitions' events.
    interactions = app.topic(
        kafka.interactions_topic, kafka.control_topic, key_serializer="raw", value_serializer="raw"
    )
    control_dlq = raw_topic(kafka.control_topic + kafka.dlq_suffix)
    recommendations = raw_topic(kafka.recommendations_topic)
    interactions_dlq = raw_topic(kafka.interactions_topic + kafka.dlq_suffix)
    items = raw_topic(kafka.items_topic)
    items_dlq = raw_topic(kafka.items_topic + kafka.dlq_suffix)

    client = redis_client(settings)  # one connection pool for every adapter
    history = RedisHistory(
        client,
        settings.redis.key_prefix,
        settings.redis.history_length,
        settings.redis.dedup_window,
        settings.redis.user_ttl_s,
        settings.policy.purchased_max,
        replica_acks=settings.redis.replica_acks,
        # WAIT gives up at half the socket timeout, so it answers before the socket fails.
        replica_timeout_ms=int(settings.redis.timeout_s * 500),
    )
    policy = settings.policy
    popularity = RedisPopularity(
        client,
        settings.redis.key_prefix,
        policy.trending_half_life_s,
        policy.trending_max_items,
        policy.trending_refresh_s,
        policy.coverage_window_s,
    )
    experiment = Experiment.of(settings.experiment)
    recommender = TritonRecommender(
        settings.triton.url,
        settings.triton.recommender_model,
        settings.triton.embedder_model,
        settings.triton.timeout_s,
        settings.triton.candidate_model if experiment.candidate else "",
    )
    catalog = RedisCatalog(client, settings.redis.key_prefix)
    metrics.declare_arms(experiment)
    experiments = RedisExperimentStore(
        client, settings.redis.key_prefix, experiment.name, settings.exploration.stats_ttl_s
    )
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    if settings.privacy.user_id_key.get_secret_value() == DEVELOPMENT_USER_ID_KEY:
        logger.warning(
            "user ids are pseudonymised with the built-in development key: set"
            " STREAMREC_PRIVACY__USER_ID_KEY to a secret in production"
        )
    web.register(app, history, client, recommender, pseudonym, settings.worker)
    worker = settings.worker
    batch_window_s = worker.batch_window_ms / 1000

    async def consume(stream: faust.StreamT, processors: dict[str, Processor]) -> None:
        """Each batch's events, by topic, to that topic's processor, in the dict's order."""
        # Agents get a faust.Stream; faust's StreamT protocol leaves take_events out.
        batches = cast(faust.Stream, stream).take_events
        async for events in batches(worker.batch_max_events, within=batch_window_s):
            # take_events acknowledges the batch only after this block returns, so the
            # offsets Faust commits never run ahead of written outputs.
            raw = [_raw(e) for e in events]
            for topic, processor in processors.items():
                batch = [r for r in raw if r.topic == topic]
                if not batch:
                    continue
                started = time.perf_counter()
                outcome: BatchOutcome = await finish_even_if_cancelled(
                    processor.process(batch), len(batch)
                )
                logger.debug(
                    'batch topic="%s" events=%d dlq=%d duplicates=%d published=%d seconds=%.3f',
                    topic,
                    outcome.consumed,
                    outcome.dead_lettered,
                    outcome.duplicates,
                    outcome.published,
                    time.perf_counter() - started,
                )

    @app.agent(interactions, name="interactions")
    async def process_interactions(stream: faust.StreamT) -> None:
        await _check(recommender, experiment.pinned_versions())
        erasure = ControlProcessor(
            settings,
            history,
            popularity,
            FaustPublisher(recommendations, control_dlq, worker.max_event_bytes),
        )
        processor = InteractionProcessor(
            settings,
            history,
            recommender,
            catalog,
            popularity,
            FaustPublisher(recommendations, interactions_dlq, worker.max_event_bytes),
            experiments,
        )
        await consume(stream, {kafka.control_topic: erasure, kafka.interactions_topic: processor})

    lag_labels: set[tuple[str, str]] = set()

    @app.timer(interval=LAG_INTERVAL_S)
    async def measure_lag() -> None:
        """Lag of the input partitions this worker owns (dashboards, alerts, autoscaling)."""
        inputs = (kafka.interactions_topic, kafka.control_topic, kafka.items_topic)
        owned = [tp for tp in app.consumer.assignment() if tp.topic in inputs]
        try:
            ends = await app.consumer.highwaters(*owned) if owned else {}
        except Exception as exc:  # noqa: BLE001  (a metric must never stop the worker)
            logger.warning('consumer lag not measured error="%s"', exc)
            return
        # The group's committed offsets, also of partitions just assigned: why these are
        # not from Faust's public Sensor.on_tp_commit is in faust_internals.
        group_offsets = committed_offsets(app.consumer)
        current = set()
        for tp in owned:
            committed = group_offsets.get(tp) or 0
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
        await consume(stream, {kafka.items_topic: processor})

    return app


async def _check(recommender: TritonRecommender, versions: Sequence[int] = ()) -> None:
    """Say at start-up whether Triton is there (with the versions the experiment's arms
    name); never wait for it: while it is away the breaker degrades lists to trending and
    item upserts are retried."""
    try:
        await recommender.connect(versions)
    except DependencyError as exc:
        logger.warning('Triton not ready at start-up error="%s": lists degraded until it is', exc)


def use_event_loop(name: str) -> None:
    """Every event loop made after this is ``name``'s, Faust's own included (mode.Worker
    asks the policy for it)."""
    if name == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        # The stdlib policy makes the main thread's loop on first ask; uvloop's does not,
        # and gRPC and Faust ask before any loop runs.
        asyncio.set_event_loop(asyncio.new_event_loop())
    logger.info("event loop %s", name)


def run_worker(settings: Settings) -> None:
    """Run the worker until SIGTERM or Ctrl-C (``streamrec worker``); refused Kafka
    credentials stop it at once (ConfigError)."""
    use_event_loop(settings.worker.event_loop)
    # A loop of its own, never set as current: asyncio.run would leave the main thread
    # without the default loop that Faust and gRPC pick up later.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(check_kafka_login(settings.kafka))  # nothing without SASL
    finally:
        loop.close()
    worker = GracefulWorker(
        create_app(settings),
        settings.worker.shutdown_grace_s,
        loglevel=settings.log_level.lower(),
        quiet=True,
    )
    worker.execute_from_commandline()


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
