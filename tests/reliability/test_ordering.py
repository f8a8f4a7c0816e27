"""Late, shuffled and repeated events through the real pipeline: each history ends up
ordered by event time, with every event once."""

from __future__ import annotations

import random
import time

import pytest

from stream_app.core.privacy import Pseudonymiser
from stream_app.devtools.replay import PlannedEvent, encode, produce_raw
from tests.reliability.scenarios import record, stored_histories, wait_for_final_lists, worker
from tests.support import unique

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def test_out_of_order_and_repeated_events_give_time_ordered_exact_histories(run_settings):
    rng = random.Random(7)
    now = time.time()
    users = [unique("late") for _ in range(20)]
    timed = []  # (event, event time): 30 events a user, one a minute
    for user in users:
        for n in range(30):
            timed.append(
                (
                    PlannedEvent(user, f"{user}-{n}", str(1 + rng.randrange(1600)), "click"),
                    now - 3600 + 60 * n,
                )
            )
    sent = timed + rng.sample(timed, 200)  # 200 redeliveries
    rng.shuffle(sent)  # arrival order has nothing to do with event time
    with worker(run_settings, "ordering"):
        produce_raw(
            run_settings.kafka,
            run_settings.kafka.interactions_topic,
            [(e.user_id.encode(), encode(e, ts)) for e, ts in sent],
        )
        last_sent = {e.user_id: e for e, _ in sent}  # each user's last event to arrive
        assert not wait_for_final_lists(run_settings, list(last_sent.values()), timeout_s=60)
    pseudonym = Pseudonymiser(run_settings.privacy.user_id_key.get_secret_value())
    histories = stored_histories(run_settings, users)
    wrong = 0
    for user in users:
        by_time = sorted((ts, e) for e, ts in timed if e.user_id == user)
        expected = [(pseudonym(e.event_id), e.item_id) for _, e in by_time][
            -run_settings.redis.history_length :
        ]
        wrong += histories[user] != expected
    record(
        "shuffled events, 200 repeated", events=len(sent), users=len(users), wrong_histories=wrong
    )
    assert wrong == 0
