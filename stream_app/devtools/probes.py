"""Client-side probes for the demo and the tests: what a backend team would check by hand.

One live event in, the recommendations it triggered out; the trigger event ids a reader
has seen; a value scraped from a Prometheus ``/metrics`` endpoint.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

from stream_app.core.settings import KafkaSettings
from stream_app.devtools.kafka_io import TopicReader
from stream_app.devtools.replay import PlannedEvent, encode, produce_raw


class Triggers:
    """The trigger event ids of the recommendations messages read so far, each message
    parsed once (a reader's ``messages`` only grows): a ``read_until`` condition that
    stays cheap over a long wait."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self._parsed = 0

    def of(self, messages) -> set[str]:
        for message in messages[self._parsed :]:
            if message.value() is not None:  # a tombstone: an erased user's key
                self.ids.add(json.loads(message.value())["trigger_event_id"])
        self._parsed = len(messages)
        return self.ids


def recommendations_after(kafka: KafkaSettings, event: PlannedEvent, timeout_s: float = 30.0):
    """Produce one live event; return the recommendations message it triggered (a dict)."""
    produce_raw(
        kafka, kafka.interactions_topic, [(event.user_id.encode(), encode(event, time.time()))]
    )

    triggers = Triggers()
    with TopicReader(kafka, kafka.recommendations_topic) as reader:
        if not reader.read_until(lambda ms: event.event_id in triggers.of(ms), timeout_s):
            raise TimeoutError(f"no recommendations for event {event.event_id} in {timeout_s} s")
    messages = (json.loads(m.value()) for m in reader.messages if m.value() is not None)
    return next(m for m in messages if m["trigger_event_id"] == event.event_id)


def scrape(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return metric_sum(response.read().decode(), name, **labels)


def metric_sum(text: str, name: str, **labels: str) -> float:
    found = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(\{{.*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            found += float(match.group(2))
    return found
