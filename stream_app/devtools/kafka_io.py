"""confluent-kafka helpers for the commands (replay, demo, tests): topics, produce, read.

The worker itself talks to Kafka through Faust; these are the outside world's clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import confluent_kafka
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_app.core.client_options import confluent_security, kafka_unanswered
from stream_app.core.settings import KafkaSettings


def client_config(kafka: KafkaSettings) -> dict:
    return {"bootstrap.servers": kafka.bootstrap} | confluent_security(kafka)


def all_topics(kafka: KafkaSettings) -> list[str]:
    return [
        kafka.interactions_topic,
        kafka.interactions_topic + kafka.dlq_suffix,
        kafka.items_topic,
        kafka.items_topic + kafka.dlq_suffix,
        kafka.control_topic,
        kafka.control_topic + kafka.dlq_suffix,
        kafka.recommendations_topic,
    ]


def ensure_topics(kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Create StreamRec's topics (with ``kafka.partitions``) where they do not exist yet."""
    admin = AdminClient(client_config(kafka))
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise kafka_unanswered(kafka, timeout_s, exc.args[0]) from None
    missing = [t for t in all_topics(kafka) if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=kafka.partitions, replication_factor=1) for t in missing]
    )
    for future in futures.values():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


class Producer(confluent_kafka.Producer):
    """confluent-kafka's producer that keeps the delivery errors it is told about."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.failures: list[str] = []

    def record(self, error, message) -> None:
        """Delivery callback: pass as ``on_delivery`` to ``produce``."""
        if error is not None:
            self.failures.append(str(error))


PRODUCER_LINGER_MS = 20
"""How long replay's producer gathers events before sending. librdkafka sends a request
per partition per linger: at its default 5 ms, replaying 1,500 events/s cost the local
broker 20% of a CPU, against 6.5% at 20 ms (bench/results/pipeline)."""


def producer(kafka: KafkaSettings, linger_ms: int = PRODUCER_LINGER_MS) -> Producer:
    # Up to 4 MiB, not librdkafka's 1 MB: the hostile-input tests send 1 MB events (the
    # broker's own limit still applies; the worker rejects anything over its own limit).
    return Producer(
        client_config(kafka) | {"linger.ms": linger_ms, "acks": "all", "message.max.bytes": 4 << 20}
    )


class TopicReader:
    """Reads a whole topic from its beginning, without joining a consumer group.

    Partitions are assigned directly, so no group rebalance delays the first message.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> None:
        self._consumer = Consumer(
            client_config(kafka) | {"group.id": "streamrec-reader", "enable.auto.commit": False}
        )
        metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        )
        self.messages: list[Message] = []

    def poll(self, timeout_s: float, max_messages: int = 500) -> list[Message]:
        """The next messages (none after ``timeout_s``), without keeping them."""
        batch = self._consumer.consume(max_messages, timeout=timeout_s)
        return [m for m in batch if m.error() is None]

    def read_until(self, done: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        """Poll until ``done(messages so far)`` or the timeout; returns whether it was done."""
        deadline = time.monotonic() + timeout_s
        while not done(self.messages):
            if time.monotonic() > deadline:
                return False
            self.messages.extend(self.poll(0.2))
        return True

    def drain(self, quiet_s: float = 1.0) -> list[Message]:
        """Read until nothing new arrives for ``quiet_s``; returns every message read."""
        while batch := self.poll(quiet_s):
            self.messages.extend(batch)
        return self.messages

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
