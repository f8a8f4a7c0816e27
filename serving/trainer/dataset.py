"""Training data from StreamRec's own events: pure, no I/O (sources read, this decides).

Events are parsed with the worker's own rules (``stream_app.core.events``); invalid ones,
repeats of an event id, events for items the catalog does not hold and events of erased
users from before their erasure (the control topic's forget requests) are skipped and
counted by reason. Valid events are ordered by event time, and events with the same time
keep the order they were read in (Kafka offset): never an order made up by sorting ids.

A :class:`Timeline` holds every user's events in that order; it cuts them by time into
training sequences (before a cut-off) and evaluation tasks (each later event predicted
from everything the user did before it: the time-based protocol).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.model_server.scoring import collapse_history
from serving.offline.data import Sequences
from serving.offline.evaluate import Task
from serving.trainer.sources import SourcedEvent
from stream_app.core.errors import InvalidEvent
from stream_app.core.events import Interaction, parse_control, parse_interaction


@dataclass
class EventDataset:
    events: list[Interaction]
    """Valid events for known items, each event id once, by (ts, read order)."""
    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Reason -> events skipped: the worker's DLQ reasons, ``duplicate``, ``unknown_item``,
    ``erased``."""
    outside_window: int = 0

    @property
    def newest_ts(self) -> float | None:
        return self.events[-1].ts if self.events else None


def build_dataset(
    sourced: Iterable[SourcedEvent],
    known_items: Container[str],
    *,
    max_event_bytes: int,
    now: float,
    max_future_skew_s: float,
    window_s: float = 0.0,
    erased: Mapping[str, float] | None = None,
) -> EventDataset:
    """Parse, check and order events; with ``window_s`` keep only those at most that many
    seconds older than the newest. ``erased``: user id -> the time of their erasure."""
    erased = erased or {}
    dataset = EventDataset([])
    seen_ids: set[str] = set()
    ordered: list[tuple[float, tuple[int, int], Interaction]] = []
    for event in sourced:
        dataset.read += 1
        try:
            interaction = parse_interaction(
                event.raw, max_bytes=max_event_bytes, now=now, max_future_skew_s=max_future_skew_s
            )
        except InvalidEvent as exc:
            dataset.skipped[exc.reason] += 1
            continue
        if interaction.event_id in seen_ids:  # a producer's retry: the worker applied it once
            dataset.skipped["duplicate"] += 1
            continue
        seen_ids.add(interaction.event_id)
        if interaction.item_id not in known_items:
            dataset.skipped["unknown_item"] += 1
            continue
        if interaction.ts <= erased.get(interaction.user_id, -math.inf):
            dataset.skipped["erased"] += 1
            continue
        ordered.append((interaction.ts, event.position, interaction))
    ordered.sort(key=lambda entry: (entry[0], entry[1]))
    events = [interaction for _, _, interaction in ordered]
    if window_s and events:
        oldest = events[-1].ts - window_s
        kept = [e for e in events if e.ts >= oldest]
        dataset.outside_window = len(events) - len(kept)
        events = kept
    dataset.events = events
    return dataset


def erasures(
    sourced: Iterable[SourcedEvent], *, max_event_bytes: int, now: float, max_future_skew_s: float
) -> dict[str, float]:
    """User id -> the newest erasure asked for them, from the control topic's requests
    (invalid ones are the worker's to dead-letter: skipped here)."""
    erased: dict[str, float] = {}
    for event in sourced:
        try:
            request = parse_control(
                event.raw, max_bytes=max_event_bytes, now=now, max_future_skew_s=max_future_skew_s
            )
        except InvalidEvent:
            continue
        erased[request.user_id] = max(request.ts, erased.get(request.user_id, request.ts))
    return erased


@dataclass(frozen=True)
class UserEvents:
    rows: tuple[int, ...]  # catalog rows, 1-based
    purchased: tuple[bool, ...]
    times: tuple[float, ...]


@dataclass(frozen=True)
class Timeline:
    """Every user's events as catalog rows (row r is ``item_ids[r - 1]``), oldest first."""

    item_ids: tuple[str, ...]
    users: dict[str, UserEvents]

    @classmethod
    def of(cls, events: Sequence[Interaction], item_ids: Sequence[str]) -> Timeline:
        row_of = {item: row for row, item in enumerate(item_ids, start=1)}
        per_user: dict[str, list[Interaction]] = {}
        for event in events:
            per_user.setdefault(event.user_id, []).append(event)
        users = {
            user: UserEvents(
                tuple(row_of[e.item_id] for e in mine),
                tuple(e.is_purchase for e in mine),
                tuple(e.ts for e in mine),
            )
            for user, mine in per_user.items()
        }
        return cls(tuple(item_ids), users)

    def first_seen(self) -> np.ndarray:
        """Per catalog row (padding row 0 included): the time of its first event; inf for
        items no one interacted with."""
        first = np.full(len(self.item_ids) + 1, np.inf)
        for mine in self.users.values():
            np.minimum.at(first, np.asarray(mine.rows, dtype=np.int64), np.asarray(mine.times))
        return first

    def until(self, end: float) -> Timeline:
        """The same timeline without the events at or after ``end``."""
        users = {}
        for user, mine in self.users.items():
            keep = sum(t < end for t in mine.times)  # times are in order
            if keep:
                users[user] = UserEvents(mine.rows[:keep], mine.purchased[:keep], mine.times[:keep])
        return Timeline(self.item_ids, users)

    def cut_off(self, share: float) -> float:
        """The event time before which ``1 - share`` of the events fall."""
        times = np.sort(np.concatenate([np.array(u.times) for u in self.users.values()]))
        return float(times[min(len(times) - 1, int(len(times) * (1 - share)))])

    def training(self, before: float, since: float = -np.inf) -> Sequences:
        """Each user's items from ``since`` to before ``before``, one entry per item (as
        the served history is collapsed), for users with at least two."""
        users, items, purchased = [], [], []
        for user, mine in self.users.items():
            picked = [
                (r, p)
                for r, p, t in zip(mine.rows, mine.purchased, mine.times)
                if since <= t < before
            ]
            rows, bought = collapse_history([r for r, _ in picked], [p for _, p in picked])
            if len(rows) >= 2:
                users.append(user)
                items.append(tuple(rows))
                purchased.append(tuple(bought))
        return Sequences(self.item_ids, tuple(users), tuple(items), tuple(purchased))

    def task(
        self,
        start: float,
        end: float = np.inf,
        item_added_ts: np.ndarray | None = None,
        max_len: int = 50,
    ) -> Task:
        """Every event from ``start`` to before ``end`` whose item is new to its user,
        predicted from the user's collapsed history before it (the newest ``max_len``
        items); users with no history before it are left out (they get trending items).
        ``item_added_ts`` (per catalog row) keeps items out of the ranking before they
        entered the catalog."""
        histories, purchased, targets, times, users = [], [], [], [], []
        for user, mine in self.users.items():
            first: dict[int, bool] = {}  # row -> purchased so far, in first-seen order
            for row, bought, ts in zip(mine.rows, mine.purchased, mine.times):
                if start <= ts < end and row not in first and first:
                    recent = list(first.items())[-max_len:]
                    histories.append(tuple(r for r, _ in recent))
                    purchased.append(tuple(p for _, p in recent))
                    targets.append(row)
                    times.append(ts)
                    users.append(user)
                if ts >= end:
                    break
                first[row] = first.get(row, False) or bought
        return Task(
            histories,
            purchased,
            np.array(targets, dtype=np.int64),
            np.array(times, dtype=np.float64),
            item_added_ts,
            tuple(users),
        )
