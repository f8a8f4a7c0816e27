"""Erasure by event (``worker.erasure``) and the interactions that follow it, on the
in-memory doubles; the Redis scripts themselves are tested in tests/integration."""

import asyncio
import json
import logging

from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import Settings
from stream_app.worker.erasure import ControlProcessor
from stream_app.worker.metrics import REGISTRY
from stream_app.worker.ports import RawEvent
from stream_app.worker.testing import InMemoryHistory, InMemoryPopularity, RecordingPublisher
from tests.unit.test_processors import NOW, click, purchase, raw, run

PSEUDONYM = Pseudonymiser(Settings().privacy.user_id_key.get_secret_value())


def forget(user: str, ts: float) -> RawEvent:
    body = json.dumps({"type": "forget", "user_id": user, "ts": ts}).encode()
    return RawEvent(user.encode(), body, "users.control", 0, 0, NOW)


def erase(history, batch, popularity=None):
    publisher = RecordingPublisher()
    popularity = popularity or InMemoryPopularity()
    processor = ControlProcessor(Settings(), history, popularity, publisher, clock=lambda: NOW)
    outcome = asyncio.run(processor.process(batch))
    return outcome, publisher


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_forget_deletes_what_the_worker_kept_and_tombstones_the_key():
    history = InMemoryHistory()
    before = [raw(click("ann", "a1", "1", NOW - 30)), raw(purchase("ann", "a2", "2"))]
    run(history, before + [raw(click("bob", "b1", "3"))])
    ann = PSEUDONYM("ann")
    assert ann in history.histories and ann in history.bought and ann in history.saved
    popularity = InMemoryPopularity()
    erased_before = metric("streamrec_privacy_users_erased_total")

    outcome, publisher = erase(history, [forget("ann", NOW)], popularity)

    assert outcome.consumed == 1 and outcome.dead_lettered == 0
    for kept in (history.histories, history.seen, history.bought, history.saved):
        assert ann not in kept
    assert PSEUDONYM("bob") in history.histories  # nobody else's
    assert [e.item_id for e in popularity.forgotten] == ["1", "2"]  # out of trending
    assert publisher.tombstones == ["ann"]  # the caller's key, as the lists had it
    assert publisher.flushes == 1
    assert metric("streamrec_privacy_users_erased_total") == erased_before + 1


def test_events_from_before_the_erasure_stay_dropped_and_later_ones_start_afresh():
    history = InMemoryHistory()
    events = [raw(click("ann", f"a{n}", str(n), NOW - 10 + n)) for n in range(1, 4)]
    run(history, events)
    erase(history, [forget("ann", NOW - 5)])
    dropped_before = metric("streamrec_privacy_events_dropped_total")

    # Kafka redelivers the old events (a crash before the commit): nothing comes back.
    outcome, publisher = run(history, events)
    assert PSEUDONYM("ann") not in history.histories and publisher.published == []
    assert outcome.duplicates == 0
    assert metric("streamrec_privacy_events_dropped_total") == dropped_before + 3

    # A late event from before the request, beside a new one after it.
    late, new = raw(click("ann", "late", "7", NOW - 6)), raw(click("ann", "new", "8", NOW - 4))
    _, publisher = run(history, [late, new])
    assert [h.item_id for h in history.histories[PSEUDONYM("ann")]] == ["8"]
    (message,) = publisher.published
    assert message.user_id == "ann" and "8" not in [i.item_id for i in message.items]


def test_a_repeated_request_erases_nothing_more_and_tombstones_again():
    history = InMemoryHistory()
    run(history, [raw(click("ann", "a1", "1"))])
    erase(history, [forget("ann", NOW)])
    _, publisher = erase(history, [forget("ann", NOW - 100), forget("ann", NOW - 50)])
    assert publisher.tombstones == ["ann"]  # one per user and batch
    assert history.forgotten[PSEUDONYM("ann")] == NOW  # an older request never shortens it


def test_bad_requests_are_dead_lettered_with_their_reason():
    bad = RawEvent(b"k", b'{"type": "forget", "user_id": "ann"}', "users.control", 0, 1, NOW)
    outcome, publisher = erase(InMemoryHistory(), [bad])
    assert [(e.value, err.reason) for e, err in publisher.dead_letters] == [
        (bad.value, "missing_field")
    ]
    assert outcome.dead_lettered == 1 and publisher.tombstones == []


def test_the_log_names_the_pseudonym_never_the_callers_id(caplog):
    history = InMemoryHistory()
    run(history, [raw(click("ann-7", "a1", "1"))])
    with caplog.at_level(logging.INFO, logger="stream_app.worker.erasure"):
        erase(history, [forget("ann-7", NOW)])
    assert PSEUDONYM("ann-7") in caplog.text and "ann-7" not in caplog.text
