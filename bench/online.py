"""The freshness curve: a model frozen after training on the first 70% of MovieLens-100k's
time, against the same model updated every N events of the stream that follows.

    python -m bench.online [--schedules 1000,5000,20000] [--controls 5000] [--window 2500]

MovieLens reaches training as every deployment's data does: replayed into Kafka with its
own timestamps (a topic of this run), read back by the trainer's source and dataset code,
with the item vectors the served encoder put in Redis. The frozen model is what the
trainer's full retrain (``serving.trainer.cycle.train_candidate``) makes of the events
before the cut; each update is its warm start (the live weights, the id table grown to the
items seen so far, ``trainer.warm_epochs`` epochs) on every event before the update. The
gate is left out, so each schedule shows what updating alone does; a deployed cycle also
holds its newest events back for the gate, which this does not model. The control
schedule trains exactly as often on the frozen model's own events only: what more
training alone does, without fresher data.

Every streamed event whose item is new to its user is scored by the model that was live
at that moment (trained on events strictly before it), from the user's whole history
before it (the time-based protocol, full ranking, seen items masked). Per window of
streamed events: NDCG@10, Recall@10, and the share of events whose user or item the
frozen model never saw. Updated against frozen, paired over the same events, with a
bootstrap over users. CPU seconds per update are the process's (all threads) while it
trains: not the topic read, export, gate or load of a real cycle.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from bench.inference_common import machine, markdown_table
from serving.offline.data import load_movielens
from serving.offline.evaluate import Task, ranking_metrics, target_ranks_of
from serving.offline.export_head import checkpoint
from serving.offline.train import score_fn
from serving.trainer.catalog import read_catalog
from serving.trainer.cycle import catalog_rows, event_dataset, train_candidate
from serving.trainer.dataset import Timeline
from serving.trainer.sources import read_topic
from stream_app.core.settings import Settings, load_settings
from stream_app.devtools.demo import prepare_stack
from stream_app.devtools.devstack import isolated
from stream_app.devtools.kafka_io import ensure_topics
from stream_app.devtools.redis_io import redis_client
from stream_app.devtools.replay import plan_events, replay

logger = logging.getLogger(__name__)

TRAIN_SHARE_OF_TIME = 0.7
VAR = Path("var/bench/online")
BOOTSTRAP = 2000


def run(
    settings: Settings, schedules: list[int], controls: list[int], window: int, out: Path
) -> dict:
    started = time.monotonic()
    with prepare_stack(settings):
        topic_settings = isolated(settings, f"online-{uuid.uuid4().hex[:6]}", VAR)
        ensure_topics(topic_settings.kafka)
        kafka = topic_settings.kafka
        planned = list(plan_events(load_movielens().ratings, run_id="online", keep_time=True))
        replay(kafka, planned)
        catalog = read_catalog(redis_client(settings), settings.redis.key_prefix)
        topic = read_topic(kafka, kafka.interactions_topic, progress=True)
        dataset = event_dataset(settings, topic, catalog)
    events = dataset.events
    # Every item was in the catalog from the start: the replayed events are from 1997-98.
    item_ids, text, _ = catalog_rows(catalog, ())
    timeline = Timeline.of(events, item_ids)
    first, last = events[0].ts, events[-1].ts
    cut = first + TRAIN_SHARE_OF_TIME * (last - first)
    streamed = [e for e in events if e.ts >= cut]
    print(
        f"{len(events):,} events read back from Kafka; training on {len(events) - len(streamed):,}"
        f" before {time.strftime('%Y-%m-%d', time.gmtime(cut))}, streaming {len(streamed):,}",
        file=sys.stderr,
    )

    frozen, frozen_cpu = _train_frozen(timeline, cut, text, settings)
    pre_cut = timeline.until(cut)
    task = timeline.task(cut)
    seen_users = {u for u, mine in timeline.users.items() if mine.times[0] < cut}
    seen_items = {
        r for mine in timeline.users.values() for r, t in zip(mine.rows, mine.times) if t < cut
    }
    new_user = np.array([u not in seen_users for u in task.users])
    new_item = np.array([t not in seen_items for t in task.targets])
    edges = [streamed[i].ts for i in range(0, len(streamed), window)] + [np.inf]
    window_of = np.searchsorted(edges, task.event_ts, side="right") - 1

    def scored(every, models, boundaries) -> dict:
        return _schedule(every, models, boundaries, task, window_of, edges, new_user, new_item)

    results: dict = {"frozen": scored(None, [frozen], []) | {"update_seconds": []}}
    frozen_ndcg = results["frozen"].pop("_per_event")
    runs = [(every, False) for every in schedules] + [(every, True) for every in controls]
    for every, old_data_only in runs:
        boundaries = [streamed[i].ts for i in range(every, len(streamed), every)]
        models, seconds = [frozen], []
        for number, boundary in enumerate(boundaries, start=1):
            # The control trains as often, on the same events the frozen model had.
            learn_from, before = (pre_cut, cut) if old_data_only else (timeline, boundary)
            model, cpu = _update(models[-1], learn_from, before, text, settings)
            models.append(model)
            seconds.append(cpu)
            sys.stderr.write(f"\rupdates every {every:,} events: {number}/{len(boundaries)}")
        sys.stderr.write("\n")
        name = f"every {every:,} events" + (", old events only (control)" if old_data_only else "")
        results[name] = scored(every, models, boundaries)
        per_event = results[name].pop("_per_event")
        results[name]["update_seconds"] = seconds
        results[name]["vs_frozen"] = _paired(per_event, frozen_ndcg, task.users)
    report = {
        "command": "make bench-online  (python -m bench.online " + " ".join(sys.argv[1:]) + ")",
        "machine": machine(),
        "events": len(events),
        "trained_before": cut,
        "streamed_events": len(streamed),
        "scored_events": len(task.targets),
        "frozen_training_cpu_seconds": frozen_cpu,
        "window_events": window,
        "warm_epochs": settings.trainer.warm_epochs,
        "seconds": time.monotonic() - started,
        "schedules": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    _plot(report, out / "freshness.png")
    (out / "README.md").write_text(_readme(report))
    return report


def _train_frozen(timeline: Timeline, cut: float, text: np.ndarray, settings: Settings):
    """The trainer's full retrain on the events before ``cut``, as a cycle would make it
    there (without the gate)."""
    cpu = time.process_time()
    result, _ = train_candidate(
        settings.trainer,
        timeline.until(cut),
        text,
        before=cut,
        checkpoint=None,
        warm=False,
        progress=True,
    )
    return result.model.eval(), time.process_time() - cpu


def _update(live, timeline: Timeline, before: float, text: np.ndarray, settings: Settings):
    """One warm start, the trainer cycle's, on every event of ``timeline`` before
    ``before``; returns the model and the CPU seconds its training took."""
    rows = {int(r) for r in np.nonzero(live.id_rows.numpy())[0]}
    weights = checkpoint(live, timeline.item_ids, rows)
    cpu = time.process_time()
    result, _ = train_candidate(
        settings.trainer, timeline, text, before=before, checkpoint=weights, warm=True
    )
    return result.model.eval(), time.process_time() - cpu


def _schedule(every, models, boundaries, task: Task, window_of, edges, new_user, new_item) -> dict:
    """Each event scored by the model live at its time; metrics per window."""
    live = np.searchsorted(boundaries, task.event_ts, side="right")  # updates before it
    ranks = np.empty(len(task.targets), dtype=np.int64)
    for number, model in enumerate(models):
        picked = np.nonzero(live == number)[0]
        if len(picked):
            ranks[picked] = target_ranks_of(score_fn(model), _subset(task, picked))
    windows = []
    for w in range(len(edges) - 1):
        inside = window_of == w
        if not inside.any():
            continue
        metrics = ranking_metrics(ranks[inside])
        windows.append(
            {
                "window": w,
                "start_ts": edges[w],
                "events": int(inside.sum()),
                "ndcg@10": metrics["ndcg@10"],
                "recall@10": metrics["recall@10"],
                "new_user_share": float(new_user[inside].mean()),
                "new_item_share": float(new_item[inside].mean()),
                "new_user_or_item_share": float((new_user | new_item)[inside].mean()),
            }
        )
    overall = ranking_metrics(ranks)
    return {
        "update_every": every,
        "updates": len(models) - 1,
        "ndcg@10": overall["ndcg@10"],
        "recall@10": overall["recall@10"],
        "windows": windows,
        "_per_event": (ranks < 10) / np.log2(ranks + 2),
    }


def _subset(task: Task, picked: np.ndarray) -> Task:
    return Task(
        [task.histories[i] for i in picked],
        [task.purchased[i] for i in picked],
        task.targets[picked],
    )


def _paired(updated: np.ndarray, frozen: np.ndarray, users: tuple[str, ...]) -> dict:
    """Mean per-event NDCG@10 difference, with a 95% interval from a bootstrap over users
    (a user's events are not independent of each other)."""
    diff = updated - frozen
    by_user: dict[str, list[int]] = {}
    for index, user in enumerate(users):
        by_user.setdefault(user, []).append(index)
    sums = np.array([diff[i].sum() for i in by_user.values()])
    counts = np.array([len(i) for i in by_user.values()])
    rng = np.random.default_rng(0)
    means = []
    for _ in range(BOOTSTRAP):
        picked = rng.integers(0, len(sums), len(sums))
        means.append(sums[picked].sum() / counts[picked].sum())
    low, high = np.quantile(means, [0.025, 0.975])
    return {
        "ndcg@10_difference": float(diff.mean()),
        "ci95": [float(low), float(high)],
        "relative": float(diff.mean() / frozen.mean()),
        "events_better": int((diff > 0).sum()),
        "events_worse": int((diff < 0).sum()),
        "users": len(sums),
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ndcg_axis, share_axis) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name, schedule in report["schedules"].items():
        windows = schedule["windows"]
        ndcg_axis.plot(
            [w["window"] for w in windows], [w["ndcg@10"] for w in windows], marker="o", label=name
        )
    frozen = report["schedules"]["frozen"]["windows"]
    share_axis.bar(
        [w["window"] for w in frozen], [w["new_user_or_item_share"] for w in frozen], color="grey"
    )
    ndcg_axis.set_ylabel("NDCG@10")
    ndcg_axis.legend()
    ndcg_axis.set_title(
        f"MovieLens-100k streamed after {TRAIN_SHARE_OF_TIME:.0%} of its time, "
        f"windows of {report['window_events']:,} events"
    )
    share_axis.set_ylabel("new user\nor item")
    share_axis.set_xlabel("window of the streamed events (time order)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _readme(report: dict) -> str:
    rows = []
    for name, schedule in report["schedules"].items():
        seconds = schedule.get("update_seconds") or []
        versus = schedule.get("vs_frozen")
        rows.append(
            (
                name,
                schedule["updates"],
                f"{schedule['ndcg@10']:.4f}",
                f"{schedule['recall@10']:.4f}",
                f"{versus['relative']:+.1%} [{versus['ci95'][0]:+.4f}, {versus['ci95'][1]:+.4f}]"
                if versus
                else "—",
                f"{np.median(seconds):.1f}" if seconds else "—",
                f"{sum(seconds):.0f}" if seconds else "—",
            )
        )
    table = markdown_table(
        (
            "schedule",
            "updates",
            "NDCG@10",
            "Recall@10",
            "NDCG@10 vs frozen (paired; 95% CI of the difference)",
            "training CPU s per update (median)",
            "training CPU s, all updates",
        ),
        rows,
    )
    m = report["machine"]
    cut_day = time.strftime("%Y-%m-%d", time.gmtime(report["trained_before"]))
    return "\n".join(
        [
            "# The freshness curve: frozen vs updated every N events",
            "",
            f"- command: `{report['command']}`",
            f"- machine: {m['cpu']}, {m['nproc']} CPUs, {m['date']};"
            f" the whole run took {report['seconds'] / 60:.0f} min",
            f"- {report['events']:,} events (MovieLens-100k ratings as clicks, 4 or more also"
            " as purchases), replayed through Kafka with their own times and read back.",
            f"- frozen: trained on the events before {cut_day} ({TRAIN_SHARE_OF_TIME:.0%} of the"
            f" time span; {report['frozen_training_cpu_seconds']:.0f} CPU s); then"
            f" {report['streamed_events']:,} events streamed, of which {report['scored_events']:,}"
            " (a known user's first event with an item) are scored.",
            f"- an update: warm start, {report['warm_epochs']} epochs on every event before it;"
            " the control trains as often on the frozen model's events only. No gate: a"
            " deployed cycle also holds its newest 10% back for the gate. CPU: training only."
            " Per window: `results.json`; plot: `freshness.png`.",
            "",
            table,
            "",
            "![NDCG@10 per window](freshness.png)",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.online", description=__doc__)
    parser.add_argument("--schedules", default="1000,5000,20000", help="update every N events")
    parser.add_argument(
        "--controls", default="5000", help="also update every N events on old events only"
    )
    parser.add_argument("--window", type=int, default=2500, help="streamed events per window")
    parser.add_argument("--out", type=Path, default=Path("bench/results/online"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    schedules = [int(s) for s in args.schedules.split(",")]
    controls = [int(s) for s in args.controls.split(",") if s]
    report = run(load_settings(), schedules, controls, args.window, args.out)
    print((args.out / "README.md").read_text())
    del report


if __name__ == "__main__":
    main()
