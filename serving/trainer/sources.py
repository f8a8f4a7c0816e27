"""Where training events come from: the ``interactions`` topic, the log of record, or a
file of JSON lines in the same schema (an export from a warehouse, say).

The topic is read by partition assignment, never through a consumer group: nothing is
committed, so the workers' group and offsets are untouched. A read takes what the topic
held when it began and stops there, so a cycle trains on a fixed set while the stream goes
on: every message below each partition's end offset as the read began, then (for brokers
that report too low an end offset, as Tansu does after a multi-message batch: DESIGN.md)
the ones produced before the read began, up to the partition's end or the first message
produced after it. A start time is looked up with the broker (offsets for times) and also
checked on each message's timestamp: Tansu answers offset 0 for any time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from stream_app.core.client_options import confluent_security, kafka_unanswered
from stream_app.core.settings import KafkaSettings

READ_GROUP = "streamrec-trainer"
"""librdkafka wants a group id even for assigned partitions; nothing is ever committed."""
PROGRESS_EVERY = 20_000


@dataclass(frozen=True)
class SourcedEvent:
    """One raw event and where it was read: (partition, offset), or (0, line number) for a
    file. Events with the same timestamp keep this order, the order they were produced."""

    raw: bytes
    position: tuple[int, int]


@dataclass(frozen=True)
class StartAt:
    """Where a read of the topic begins: a time (epoch seconds: each partition's first
    message at or after it), offsets per partition, or (neither) the beginning."""

    time_s: float | None = None
    offsets: dict[int, int] | None = None

    @classmethod
    def parse_offsets(cls, text: str) -> StartAt:
        """``"0:120,1:98"``: partition 0 from offset 120, partition 1 from 98 (partitions
        not named start at the beginning)."""
        try:
            pairs = [part.split(":") for part in text.split(",") if part.strip()]
            return cls(offsets={int(p): int(o) for p, o in pairs})
        except ValueError:
            raise ValueError(
                f"offsets look like 0:120,1:98 (partition:offset), not {text!r}"
            ) from None


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    start: StartAt | None = None,
    timeout_s: float = 30.0,
    progress: bool = False,
) -> Iterator[SourcedEvent]:
    """The messages of ``topic`` from ``start`` to where it ended when the read began,
    each partition in offset order."""
    # An offset retention already deleted reads from the oldest message left.
    consumer = assigned_consumer(
        kafka, {"enable.partition.eof": True, "auto.offset.reset": "earliest"}
    )
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        except KafkaException as exc:
            raise kafka_unanswered(kafka, timeout_s, exc.args[0]) from None
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        began_ms = time.time() * 1000
        from_ms = (start.time_s * 1000) if start and start.time_s is not None else -1
        partitions = sorted(metadata.partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout_s)[1]
            for p in partitions
        }
        assignment = _start_offsets(consumer, topic, partitions, start or StartAt(), timeout_s)
        consumer.assign(assignment)
        pending = {tp.partition for tp in assignment}
        read, last_arrival = 0, time.monotonic()
        while pending:
            messages = consumer.consume(500, timeout=0.2)
            if messages:
                last_arrival = time.monotonic()
            elif time.monotonic() - last_arrival > timeout_s:
                raise KafkaException(
                    f"{topic}: nothing read for {timeout_s:.0f} s from partitions {sorted(pending)}"
                )
            for message in messages:
                partition = message.partition()
                if partition not in pending:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    pending.discard(partition)
                elif message.offset() >= ends[partition] and message.timestamp()[1] > began_ms:
                    pending.discard(partition)  # produced after the read began
                elif message.timestamp()[1] < from_ms:
                    continue  # before the start time (brokers that ignore it, see above)
                else:
                    read += 1
                    if progress and read % PROGRESS_EVERY == 0:
                        sys.stderr.write(f"\rreading {topic}: {read:,} events")
                    yield SourcedEvent(message.value() or b"", (partition, message.offset()))
        if progress:
            sys.stderr.write(f"\rreading {topic}: {read:,} events\n")
    finally:
        consumer.close()


def assigned_consumer(kafka: KafkaSettings, extra: dict | None = None) -> Consumer:
    """A consumer for partitions assigned by hand: the trainer's group id (which
    librdkafka wants), nothing ever committed."""
    return Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": READ_GROUP, "enable.auto.commit": False}
        | confluent_security(kafka)
        | (extra or {})
    )


def _start_offsets(
    consumer: Consumer, topic: str, partitions: list[int], start: StartAt, timeout_s: float
) -> list[TopicPartition]:
    if start.offsets is not None:
        unknown = sorted(set(start.offsets) - set(partitions))
        if unknown:
            raise ValueError(f"{topic} has no partition {unknown[0]} (it has {partitions})")
        return [
            TopicPartition(topic, p, start.offsets.get(p, OFFSET_BEGINNING)) for p in partitions
        ]
    if start.time_s is None:
        return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    wanted = [TopicPartition(topic, p, int(start.time_s * 1000)) for p in partitions]
    found = consumer.offsets_for_times(wanted, timeout=timeout_s)
    # -1: no message at or after that time in the partition: nothing to read there.
    return [
        TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
        for tp in found
    ]


def read_file(path: Path) -> Iterator[SourcedEvent]:
    """JSON lines, one event per line as the topic holds them; blank lines are skipped."""
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield SourcedEvent(line.rstrip(b"\r\n"), (0, number))
