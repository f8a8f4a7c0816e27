"""The naive baseline: the worker's job done one event at a time, the obvious way.

Built from the same parts as the real worker (Kafka, Redis, Triton, the same parsing and
policy) but with none of its batching: per event, one Redis call per operation, one
synchronous Triton HTTP request, a produce that waits for its delivery and a synchronous
offset commit. ``streamrec bench`` runs it as a child process next to the optimised
worker and reports the ratio of their throughput.

    python -m bench.naive --events 2000     (settings from STREAMREC_ variables)

Prints one JSON line: events handled, the seconds from the first to the last, CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import redis
import tritonclient.http as httpclient
from confluent_kafka import Consumer

from stream_app.core.errors import InvalidEvent
from stream_app.core.events import Recommendations, parse_interaction
from stream_app.core.id_lists import join_rows, split_rows
from stream_app.core.policy import Candidate, assemble, excluded_items
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import Settings, load_settings
from stream_app.devtools.kafka_io import client_config, producer
from stream_app.devtools.redis_io import CatalogStore, redis_client

TRENDING_READ = 100


class NaiveWorker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        kafka = settings.kafka
        self.consumer = Consumer(
            client_config(kafka)
            | {
                "group.id": kafka.consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([kafka.interactions_topic])
        self.producer = producer(kafka, linger_ms=0)  # each list is sent on its own
        self.redis: redis.Redis = redis_client(settings)
        self.catalog = CatalogStore(self.redis, settings.redis.key_prefix)
        self.triton = httpclient.InferenceServerClient(f"127.0.0.1:{settings.triton.http_port}")
        self.pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
        self.prefix = settings.redis.key_prefix + "naive:"

    def handle(self, raw: bytes) -> bool:
        """One event, start to finish; False if it was invalid or a repeat."""
        worker, store = self.settings.worker, self.settings.redis
        try:
            event = parse_interaction(
                raw,
                max_bytes=worker.max_event_bytes,
                now=time.time(),
                max_future_skew_s=worker.max_future_skew_s,
            )
        except InvalidEvent:
            return False
        user, event_id = self.pseudonym(event.user_id), self.pseudonym(event.event_id)
        r, p = self.redis, self.prefix
        history, seen, bought = f"{p}h:{user}", f"{p}seen:{user}", f"{p}bought:{user}"
        if r.zscore(seen, event_id) is not None:
            return False
        r.zadd(seen, {event_id: event.ts})
        r.zadd(history, {f"{event_id}\t{event.item_id}\t{event.type}": event.ts})
        if event.type == "purchase":
            r.zadd(bought, {event.item_id: event.ts})
        r.zremrangebyrank(history, 0, -(store.history_length + 1))
        r.zremrangebyrank(seen, 0, -(store.dedup_window + 1))
        for key in (history, seen, bought):
            r.expire(key, store.user_ttl_s)
        r.zincrby(f"{p}trending", 1.0, event.item_id)
        entries = [m.decode().split("\t") for m in r.zrange(history, 0, -1)]
        purchased = {i.decode() for i in r.zrange(bought, 0, -1)}
        trending = [
            (i.decode(), s) for i, s in r.zrevrange(f"{p}trending", 0, TRENDING_READ - 1, True)
        ]
        skip = excluded_items(
            [(item, kind == "purchase") for _, item, kind in entries],
            purchased,
            self.settings.policy.exclude_clicked,
        )
        candidates, model_version = self._recommend(entries, sorted(skip))
        because = sorted({c.because_item_id for c in candidates if c.because_item_id})
        titles = dict(zip(because, self.catalog.titles(because)))
        items = assemble(candidates, trending, skip, worker.top_k, titles, purchased)
        message = Recommendations(
            user_id=event.user_id,
            items=items,
            model_version=model_version,
            trigger_event_id=event.event_id,
            event_ts=event.ts,
            generated_at=time.time(),
        )
        r.set(f"{p}recs:{user}", message.to_json(with_caller_ids=False), ex=store.user_ttl_s)
        self.producer.produce(
            self.settings.kafka.recommendations_topic,
            key=event.user_id.encode(),
            value=message.to_json(),
        )
        self.producer.flush()
        return True

    def _recommend(self, entries: list[list[str]], exclude: list[str]):
        """One synchronous HTTP request for one user."""
        bought = np.array([[kind == "purchase" for _, _, kind in entries]], dtype=bool)
        inputs = [
            _input("HISTORY", join_rows([[item for _, item, _ in entries]]), "BYTES"),
            _input("HISTORY_PURCHASED", bought, "BOOL"),
            _input("EXCLUDE", join_rows([exclude]), "BYTES"),
        ]
        parameters = {
            "top_k": self.settings.worker.top_k,
            "diversity": self.settings.policy.diversity,
        }
        result = self.triton.infer(
            self.settings.triton.recommender_model, inputs, parameters=parameters
        )
        (items,), (because,) = (
            split_rows(result.as_numpy(n)) for n in ("TOP_ITEMS", "BECAUSE_ITEMS")
        )
        row = zip(items, result.as_numpy("TOP_SCORES")[0], because)
        candidates = [Candidate(i, float(s), b or None) for i, s, b in row if i]
        return candidates, result.as_numpy("MODEL_VERSION")[0, 0].decode()

    def run(self, events: int, timeout_s: float) -> dict:
        handled = 0
        first = last = None
        deadline = time.monotonic() + timeout_s
        cpu_started = time.process_time()
        while handled < events and time.monotonic() < deadline:
            message = self.consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            first = first or time.monotonic()
            self.handle(message.value())
            self.consumer.commit(message, asynchronous=False)
            handled += 1
            last = time.monotonic()
        seconds = (last - first) if first and last else 0.0
        return {
            "events": handled,
            "seconds": seconds,
            "events_per_s": handled / seconds if seconds else 0.0,
            "cpu_s": time.process_time() - cpu_started,
        }

    def close(self) -> None:
        self.consumer.close()
        self.triton.close()


def _input(name: str, array: np.ndarray, datatype: str) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    worker = NaiveWorker(load_settings())
    try:
        print(json.dumps(worker.run(args.events, args.timeout_s)), flush=True)
    finally:
        worker.close()


if __name__ == "__main__":
    main()
