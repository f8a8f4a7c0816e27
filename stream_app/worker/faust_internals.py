"""Every private Faust, mode and aiokafka name StreamRec touches, in one module.

Each touch exists because no public hook gives the same behaviour, and each is pinned by
a canary in ``tests/unit/test_faust_internals.py`` that fails first when an upgrade of
faust-streaming or aiokafka moves it:

- ``AIOKafkaConsumer._fetch_max_wait_ms``: Faust hard-codes 1500 ms. Apache Kafka answers
  a fetch as soon as any data is there, so the wait only matters when idle; Tansu (the
  local broker) holds every fetch for the full wait, which put ~0.5 s on every event's
  latency. Set through Faust's private transport factories (``App._new_transport``,
  ``Consumer._new_consumer_thread``, ``AIOKafkaConsumerThread._create_worker_consumer``).
- ``Consumer._committed_offset``: the group's committed offset per assigned partition, for
  the lag metric. Faust's public sensor hook ``Sensor.on_tp_commit`` reports only this
  worker's own commits: Faust seeds the map from the broker on assignment
  (``Consumer.perform_seek``) without calling any sensor, so through the hook a partition
  just assigned, or idle since, would have no committed offset.
- ``mode.Worker._on_sigterm``: the SIGTERM handler, given a deadline (``GracefulWorker``);
  mode offers no hook between the signal and its stop sequence.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream_app.worker.shutdown import exit_uncommitted


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts.
        consumer._fetch_max_wait_ms = cast(App, self.app).fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """faust.App whose Kafka consumer waits at most ``fetch_max_wait_ms`` per fetch."""

    def __init__(self, *args, fetch_max_wait_ms: int = 1500, **kwargs) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


def committed_offsets(consumer: faust.types.ConsumerT) -> Mapping[TP, int | None]:
    """The group's committed offset of each partition the consumer owns (None: none yet)."""
    return consumer._committed_offset  # type: ignore[attr-defined]


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
