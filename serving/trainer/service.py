"""``streamrec trainer``: a training cycle every interval, or sooner once enough new events
are in the topic; one log line per cycle, training progress on the console.

A cycle that fails (a server down, a version Triton refuses) is logged and counted, and
the next one runs on schedule: the live version keeps serving meanwhile.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition
from prometheus_client import start_http_server

from serving.model_server.redis_connection import connect_redis
from serving.trainer import metrics
from serving.trainer.catalog import read_catalog
from serving.trainer.cycle import Corrupt, CycleReport, prune, publish_and_load, run_cycle
from serving.trainer.dataset import erasures
from serving.trainer.online_gate import OnlineGate
from serving.trainer.sources import (
    SourcedEvent,
    StartAt,
    assigned_consumer,
    read_file,
    read_topic,
)
from serving.trainer.triton_control import load_served
from serving.trainer.versions import ModelRepository, Version
from stream_app.core.settings import Settings

logger = logging.getLogger(__name__)

NEW_EVENTS_POLL_S = 5.0


class Trainer:
    def __init__(
        self,
        settings: Settings,
        file: Path | None = None,
        start: StartAt | None = None,
        progress: bool = True,
        corrupt: Corrupt | None = None,
    ) -> None:
        self.settings = settings
        self.repository = ModelRepository.of(settings.triton)
        self.file, self.start = file, start or StartAt()
        self.progress, self.corrupt = progress, corrupt
        self._redis = connect_redis(settings.redis)
        self.online_gate = OnlineGate.of(settings, self.repository, self._redis)

    def events(self) -> Iterable[SourcedEvent]:
        if self.file is not None:
            return read_file(self.file)
        start = self.start
        window = self.settings.trainer.window_s
        if start == StartAt() and window:
            # Kafka timestamps are produce times, near event times: start a little early
            # and let the dataset apply the window to event times.
            start = StartAt(time_s=time.time() - 2 * window)
        kafka = self.settings.kafka
        return read_topic(kafka, kafka.interactions_topic, start, progress=self.progress)

    def erased(self) -> dict[str, float]:
        """User id -> time of their erasure, from every forget request the control topic
        holds (none for a file: export it after the erasures)."""
        if self.file is not None:
            return {}
        kafka, worker = self.settings.kafka, self.settings.worker
        return erasures(
            read_topic(kafka, kafka.control_topic),
            max_event_bytes=worker.max_event_bytes,
            now=time.time(),
            max_future_skew_s=worker.max_future_skew_s,
        )

    def load(self, version: Version) -> float:
        return load_served(self.settings, version.number)

    def settle_trial(self, candidate: Version) -> CycleReport:
        """The cycle of a trainer with a candidate on trial: its verdict, carried out."""
        assert self.online_gate is not None
        verdict = self.online_gate.verdict(candidate)
        report = CycleReport(verdict=verdict.verdict, reason=verdict.reason, mode="online")
        report.live_before = self.repository.live().number
        report.online_gate = verdict.summary()
        report.model_version = candidate.model_version
        if verdict.verdict == "trial":
            return report

        def publish(version_dir: Path, provenance: dict) -> Version:
            return publish_and_load(self.repository, version_dir, provenance, self.load)

        published = self.online_gate.settle(verdict, publish)
        if published is not None:
            prune(self.settings, self.repository)
            report.version = published.number
        return report

    def cycle(self, full: bool | None = None) -> CycleReport:
        """One cycle: a full retrain after ``full_retrain_every - 1`` warm-started
        versions in a row, unless told; with a candidate on trial, the trial's verdict."""
        if full is None:
            every = self.settings.trainer.full_retrain_every
            full = self.repository.warm_starts_in_a_row() >= every - 1
        started = time.monotonic()
        try:
            on_trial = self.online_gate.on_trial() if self.online_gate else None
            if on_trial is not None:
                report = self.settle_trial(on_trial)
            else:
                catalog = read_catalog(
                    self._redis,
                    self.settings.redis.key_prefix,
                    self.repository.live().encoder_version,
                )
                report = run_cycle(
                    self.settings,
                    self.repository,
                    self.events(),
                    catalog,
                    full=full,
                    load=self.load,
                    progress=self.progress,
                    corrupt=self.corrupt,
                    online_gate=self.online_gate,
                    erased=self.erased(),
                )
        except Exception:
            metrics.record(None, time.monotonic() - started)
            raise
        metrics.record(report, time.monotonic() - started)
        logger.info(report.log_line())
        return report

    def run(self, stop: threading.Event) -> None:
        """Cycles until ``stop`` is set; metrics on the configured port."""
        trainer = self.settings.trainer
        start_http_server(trainer.metrics_port, trainer.metrics_host, registry=metrics.REGISTRY)
        metrics.watch_live(self.repository.live)
        counter = _NewEvents(self.settings) if trainer.every_events else None
        while not stop.is_set():
            began = time.monotonic()
            if counter:
                counter.reset()  # what arrives from here on is new to the next cycle
            try:
                self.cycle()
            except Exception:
                logger.exception("trainer cycle failed; the live version keeps serving")
            while not stop.wait(min(NEW_EVENTS_POLL_S, trainer.interval_s)):
                if time.monotonic() - began >= trainer.interval_s:
                    break
                if counter and counter.poll() >= trainer.every_events:
                    break
        if counter:
            counter.close()


class _NewEvents:
    """Counts the messages that reach the interactions topic, by reading them as they come
    (without parsing; assigned partitions, nothing committed). End offsets would be cheaper
    but are not reliable on every broker: Tansu reports them far too low."""

    def __init__(self, settings: Settings) -> None:
        kafka = settings.kafka
        self._consumer = assigned_consumer(kafka)
        topic = kafka.interactions_topic
        partitions = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
        self.count = 0

    def poll(self) -> int:
        """Messages counted so far (since the last :meth:`reset`)."""
        try:
            while batch := self._consumer.consume(10_000, timeout=0.5):
                self.count += sum(m.error() is None for m in batch)
        except KafkaException as exc:
            logger.warning('cannot count new events error="%s"', exc)
        return self.count

    def reset(self) -> None:
        self.poll()
        self.count = 0

    def close(self) -> None:
        self._consumer.close()


def run_trainer(
    settings: Settings,
    once: bool,
    full: bool | None = None,
    file: Path | None = None,
    start: StartAt | None = None,
) -> CycleReport | None:
    """``--once``: one cycle (a CronJob's); otherwise cycles until SIGTERM or Ctrl-C."""
    trainer = Trainer(settings, file=file, start=start)
    if once:
        return trainer.cycle(full=full)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    trainer.run(stop)
    return None
