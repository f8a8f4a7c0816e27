"""Canaries for the private Faust, mode and aiokafka names ``worker.faust_internals``
touches: each fails first when an upgrade moves or renames what we rely on."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping

import aiokafka
import faust
import mode
from faust.transport import consumer as faust_consumer

from stream_app.core.settings import Settings
from stream_app.worker.app import create_app
from stream_app.worker.faust_internals import GracefulWorker, committed_offsets


def app(tmp_path, fetch_max_wait_ms: int = 25) -> faust.App:
    return create_app(
        Settings(
            kafka={"fetch_max_wait_ms": fetch_max_wait_ms},
            worker={"data_dir": str(tmp_path)},
        )
    )


def test_the_fetch_wait_reaches_the_aiokafka_consumer_faust_creates(tmp_path):
    async def create():  # Faust and aiokafka want a running loop; nothing connects yet
        thread = app(tmp_path, fetch_max_wait_ms=37).consumer._thread
        return thread._create_consumer(asyncio.get_running_loop())

    consumer = asyncio.run(create())
    assert isinstance(consumer, aiokafka.AIOKafkaConsumer)
    assert consumer._fetch_max_wait_ms == 37
    # ...and aiokafka hands that attribute to its fetcher when the consumer starts.
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start


def test_faust_keeps_the_committed_offsets_it_seeds_on_assignment_and_commit(tmp_path):
    async def offsets_map():  # Faust builds its consumer on a running loop
        return committed_offsets(app(tmp_path).consumer)

    offsets = asyncio.run(offsets_map())
    assert isinstance(offsets, Mapping) and offsets.get(("interactions", 0)) is None
    # Seeded from the broker when partitions are assigned, updated on every commit:
    # what makes it the group's committed offset, not only this worker's commits.
    assert "self._committed_offset.update" in inspect.getsource(
        faust_consumer.Consumer.perform_seek
    )
    assert "self._committed_offset.update" in inspect.getsource(
        faust_consumer.Consumer._commit_offsets
    )


def test_the_graceful_sigterm_handler_is_the_one_mode_installs():
    installs = inspect.getsource(mode.Worker._install_signal_handlers_unix)
    assert "add_signal_handler(signal.SIGTERM, self._on_sigterm)" in installs
    assert GracefulWorker._on_sigterm is not faust.Worker._on_sigterm
    assert callable(getattr(faust.Worker, "_on_sigterm", None))
