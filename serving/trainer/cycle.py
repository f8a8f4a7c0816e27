"""One training cycle: events and catalog in, perhaps a new live version out.

1. the dataset: valid events for known items in the window, ordered (``dataset``);
2. the newest ``holdout_share`` of them are held back for the gate (time-based protocol);
3. the candidate (:func:`train_candidate`): warm-started from the live version (its id
   table grown to the catalog as it is now) for a few epochs, or, on a full retrain, from
   scratch, as many epochs as early stopping chooses, on every event before the held-back
   ones;
4. it is exported into a staging directory (ONNX, parity-checked), and the gate scores it
   and the live version on the held-back events through what Triton would run;
5. promoted: the staging directory becomes the next version and Triton loads it (or, with
   the online gate, it goes on trial first: ``online_gate``); rejected: it is deleted and
   nothing changes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from serving.model_server.scoring import left_pad
from serving.offline.data import Sequences
from serving.offline.evaluate import Task
from serving.offline.export_head import CHECKPOINT, write_head
from serving.offline.head import HeadConfig
from serving.offline.train import TrainConfig, TrainResult, grow_id_table, train_head
from serving.trainer.catalog import Catalog
from serving.trainer.dataset import EventDataset, Timeline, build_dataset
from serving.trainer.gate import run_gate, served_scores
from serving.trainer.online_gate import OnlineGate
from serving.trainer.sources import SourcedEvent
from serving.trainer.versions import ModelRepository, Version
from stream_app.core.experiments import Experiment
from stream_app.core.settings import Settings, TrainerSettings

logger = logging.getLogger(__name__)

PARITY_USERS = 200
FULL_LEARNING_RATE = 3e-3
"""A full retrain is ``make head``'s recipe: this peak, cosine over ``full_epochs``,
training windows cut anew each epoch, early stopping after ``FULL_PATIENCE`` epochs."""
FULL_PATIENCE = 15
WARM_LEARNING_RATE = 1e-3
"""Lower than from scratch, and constant: a warm start refines weights that already rank
well, over a few epochs too short for a warm-up."""
DEFAULT_HEAD = {"hidden": 64, "dropout": 0.2, "id_dropout": 0.5, "id_scale": 0.6}
"""The head ``make head`` trains (text + id, half the ids hidden per batch, ids at 0.6
outside training: bench/results/offline/id_scale.md)."""


@dataclass
class CycleReport:
    verdict: str = "skipped"  # promoted | rejected | skipped | trial
    reason: str = ""
    mode: str = ""  # warm | full
    events: int = 0
    items: int = 0
    users: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    live_before: int | None = None
    version: int | None = None
    """The version number promoted, if any."""
    model_version: str = ""
    gate: dict = field(default_factory=dict)
    online_gate: dict = field(default_factory=dict)
    """A trial's figures (the online gate): hits and impressions of both arms since it began."""
    trained_until_ts: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def log_line(self) -> str:
        gate = self.gate
        scores = (
            f" candidate_ndcg@10={gate['candidate']['ndcg@10']:.4f}"
            f" live_ndcg@10={gate['live']['ndcg@10']:.4f} gate_events={gate['events']}"
            if gate
            else ""
        )
        online = self.online_gate
        if online:
            scores += (
                f" candidate_hit_rate={online['candidate']['hit_rate']:.4f}"
                f" control_hit_rate={online['control']['hit_rate']:.4f}"
                f" candidate_impressions={online['candidate']['impressions']:.0f}"
                f" control_impressions={online['control']['impressions']:.0f}"
            )
        skipped = sum(self.skipped.values())
        return (
            f"trainer cycle verdict={self.verdict} mode={self.mode or '-'} events={self.events}"
            f" items={self.items} users={self.users} skipped_events={skipped}{scores}"
            f" live_before={self.live_before} version={self.version}"
            f" model_version={self.model_version or '-'}"
            f" seconds={sum(self.seconds.values()):.1f}"
            + (f' reason="{self.reason}"' if self.reason else "")
        )


Corrupt = Callable[[Sequences], Sequences]
"""Tests only: changes the training sequences, to make a candidate the gate must stop."""


def run_cycle(
    settings: Settings,
    repository: ModelRepository,
    events: Iterable[SourcedEvent],
    catalog: Catalog,
    *,
    full: bool,
    load: Callable[[Version], float],
    now: float | None = None,
    progress: bool = False,
    corrupt: Corrupt | None = None,
    online_gate: OnlineGate | None = None,
    erased: Mapping[str, float] | None = None,
) -> CycleReport:
    """``load`` makes Triton serve a published version. With an ``online_gate``, a
    candidate that passes the offline gate goes on trial instead of live. ``erased``: user
    id -> time of their erasure (their events until then are left out)."""
    trainer = settings.trainer
    report = CycleReport()
    clock = time.monotonic()
    dataset = event_dataset(settings, events, catalog, now, erased)
    report.skipped = dict(dataset.skipped)
    report.events = len(dataset.events)
    report.users = len({e.user_id for e in dataset.events})
    report.items = len({e.item_id for e in dataset.events})
    live = repository.live()
    report.live_before = live.number
    report.seconds["dataset"] = _lap(clock)
    if len(dataset.events) < trainer.min_events:
        report.reason = (
            f"{len(dataset.events)} valid events, fewer than min_events={trainer.min_events}"
        )
        return report

    if live.encoder_version not in catalog.vectors_of:
        # An operator promoted a version on another encoder while the catalog was read.
        report.reason = f"live version {live.number} changed encoder meanwhile: next cycle"
        return report
    checkpoint = torch.load(live.path / CHECKPOINT, weights_only=True) if live.is_head else None
    # A new encoder moves every text vector: nothing the live head learned carries over.
    new_encoder = catalog.encoder != live.encoder_version
    report.mode = "full" if full or checkpoint is None or new_encoder else "warm"
    item_ids, text_vectors, added_ts = catalog_rows(
        catalog, checkpoint["item_ids"] if checkpoint else ()
    )
    # The live head scores with its own encoder's vectors (a roll-out trains on a new one).
    live_vectors = padded(catalog.in_order(item_ids).vectors_of[live.encoder_version])
    timeline = Timeline.of(dataset.events, item_ids)
    # An item someone interacted with was in the catalog by then, whatever the catalog log
    # says (events exported from a warehouse predate the catalog's loading).
    added_ts = np.minimum(added_ts, timeline.first_seen())
    gate_cut = timeline.cut_off(trainer.holdout_share)
    gate_task = timeline.task(gate_cut, item_added_ts=added_ts)
    if not len(gate_task.targets):
        report.reason = "no held-back event of a user with a history to score"
        return report

    warm = report.mode == "warm"
    trained = train_candidate(
        trainer,
        timeline,
        text_vectors,
        before=gate_cut,
        checkpoint=checkpoint,
        warm=warm,
        item_added_ts=added_ts,
        progress=progress,
        corrupt=corrupt,
    )
    if trained is None:
        report.reason = "no user has two items before the held-back events"
        return report
    result, train = trained
    trained_until = max(t for u in timeline.users.values() for t in u.times if t < gate_cut)
    report.trained_until_ts = trained_until
    report.seconds["train"] = _lap(clock, report.seconds)

    model = result.model.cpu().eval()
    trained_rows = {int(r) for r in np.nonzero(model.id_rows.numpy())[0]}
    digest = hashlib.sha256(
        b"".join(t.numpy().tobytes() for t in model.state_dict().values())
    ).hexdigest()[:8]
    tag = f"head-text+id-{digest}" if model.config.use_ids else f"head-text-{digest}"
    with repository.lock():  # from staging to publishing: no one clears our staging
        staged = repository.staging_dir()
        try:
            parity_rows, parity_types = _parity_inputs(gate_task, model.config.max_len)
            write_head(
                model,
                item_ids,
                trained_rows,
                staged,
                tag,
                parity_rows,
                parity_types,
                encoder_version=catalog.encoder,
            )
            report.seconds["export"] = _lap(clock, report.seconds)
            gate = run_gate(
                served_scores(staged, item_ids, text_vectors),
                served_scores(live.path, item_ids, live_vectors),
                gate_task,
                trainer.gate_margin,
            )
            report.gate = gate.summary()
            report.seconds["gate"] = _lap(clock, report.seconds)
            if not gate.passed:
                report.verdict = "rejected"
                report.reason = "candidate below the live version beyond the margin"
                return report
            provenance = {
                "trained_until_ts": trained_until,
                "trained_at": time.time(),
                "mode": report.mode,
                "warm_start_from": live.number if warm else None,
                "encoder_version": catalog.encoder,
                "events": report.events,
                "training_users": len(train.users),
                "items": len(item_ids),
                "gate": report.gate,
            }
            if online_gate is not None:
                on_trial = online_gate.start(staged, provenance)
                report.seconds["load"] = _lap(clock, report.seconds)
                report.verdict, report.version, report.model_version = "trial", None, tag
                report.reason = f"on trial as {online_gate.slot.name} version {on_trial.number}"
                return report
            published = publish_and_load(repository, staged, provenance, load)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    report.seconds["load"] = _lap(clock, report.seconds)
    prune(settings, repository)
    report.verdict, report.version, report.model_version = "promoted", published.number, tag
    return report


def publish_and_load(
    repository: ModelRepository,
    staged: Path,
    provenance: dict,
    load: Callable[[Version], float],
) -> Version:
    """A complete staged directory becomes the next version, and Triton serves it. Hold
    the repository's lock."""
    published = repository.publish(staged, provenance)
    try:
        load(published)
    except Exception:
        # Triton did not load it: take it out, so the repository stays loadable and
        # live() agrees with what Triton serves.
        repository.remove(published)
        raise
    return published


def prune(settings: Settings, repository: ModelRepository) -> None:
    """Old versions go; those an experiment arm serves stay."""
    pinned = Experiment.of(settings.experiment).pinned_versions()
    repository.prune(settings.trainer.keep_versions, pinned)


def event_dataset(
    settings: Settings,
    events: Iterable[SourcedEvent],
    catalog: Catalog,
    now: float | None = None,
    erased: Mapping[str, float] | None = None,
) -> EventDataset:
    """The events a cycle learns from: checked with the worker's limits, for the catalog's
    items, within the trainer's window, none of an erased user's from before their erasure."""
    return build_dataset(
        events,
        frozenset(catalog.item_ids),
        max_event_bytes=settings.worker.max_event_bytes,
        now=time.time() if now is None else now,
        max_future_skew_s=settings.worker.max_future_skew_s,
        window_s=settings.trainer.window_s,
        erased=erased,
    )


def train_candidate(
    trainer: TrainerSettings,
    timeline: Timeline,
    text_vectors: np.ndarray,
    *,
    before: float,
    checkpoint: dict | None,
    warm: bool,
    item_added_ts: np.ndarray | None = None,
    progress: bool = False,
    corrupt: Corrupt | None = None,
) -> tuple[TrainResult, Sequences] | None:
    """A candidate trained on the events before ``before``; None when there are none.

    Warm: from ``checkpoint``'s weights (its id table regrown to the timeline's items),
    ``warm_epochs`` epochs. Full: from scratch in the checkpoint's architecture; early
    stopping on the newest tenth-of-the-window of those events picks the epoch count, then
    the same epochs of the same schedule on all of them, so no event is left out."""
    item_ids = timeline.item_ids
    live_config = (
        {k: v for k, v in checkpoint["config"].items() if k != "n_items"} if checkpoint else {}
    )
    head_config = HeadConfig(n_items=len(item_ids), **(DEFAULT_HEAD | live_config))
    train = timeline.training(before=before)
    if corrupt is not None:
        train = corrupt(train)
    if not train.users:
        return None
    if warm:
        assert checkpoint is not None
        old_ids = checkpoint["item_ids"]
        had_id = np.zeros(len(old_ids), dtype=bool)
        had_id[np.asarray(checkpoint["trained_rows"], dtype=np.int64) - 1] = True
        warm_start = grow_id_table(checkpoint["state_dict"], old_ids, had_id, item_ids)
        config = TrainConfig(
            epochs=trainer.warm_epochs, learning_rate=WARM_LEARNING_RATE, shifted_windows=True
        )
        result = train_head(
            head_config, config, train, text_vectors, None, progress, warm_start=warm_start
        )
        return result, train
    config = TrainConfig(
        epochs=trainer.full_epochs,
        learning_rate=FULL_LEARNING_RATE,
        patience=FULL_PATIENCE,
        schedule="cosine",
        shifted_windows=True,
    )
    valid_cut = timeline.until(before).cut_off(trainer.holdout_share)
    valid = timeline.task(valid_cut, before, item_added_ts=item_added_ts)
    early = timeline.training(before=valid_cut)
    if corrupt is not None:
        early = corrupt(early)
    if len(valid.targets) and early.users:
        best = train_head(head_config, config, early, text_vectors, valid, progress).best_epoch
        config = replace(config, stop_after=best)
    result = train_head(head_config, config, train, text_vectors, None, progress)
    return result, train


def catalog_rows(
    catalog: Catalog, live_order: Iterable[str]
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The candidate's catalog rows: item ids (the live version's still in the catalog, in
    its order, then every item that arrived since, oldest first), their text vectors and
    when each entered the catalog, both with the padding row 0 first."""
    added = dict(zip(catalog.item_ids, catalog.added_ts))
    kept = [item for item in live_order if item in added]
    known = set(kept)
    newcomers = sorted(
        (item for item in catalog.item_ids if item not in known), key=lambda i: (added[i], i)
    )
    item_ids = tuple(kept + newcomers)
    ordered = catalog.in_order(item_ids)
    return item_ids, padded(ordered.vectors), np.concatenate([[-np.inf], ordered.added_ts])


def padded(vectors: np.ndarray) -> np.ndarray:
    """Catalog vectors with the padding row 0 (zeros) first."""
    return np.vstack([np.zeros((1, vectors.shape[1]), np.float32), vectors])


def _parity_inputs(task: Task, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    return left_pad(task.histories[:PARITY_USERS], task.purchased[:PARITY_USERS], max_len)


def _lap(started: float, seconds: dict[str, float] | None = None) -> float:
    """Seconds since ``started`` not yet booked in ``seconds``."""
    return time.monotonic() - started - sum((seconds or {}).values())
