"""Experiments and exploration on a MovieLens replay through the real stack.

    python -m bench.experiments [--epochs 30]      # make bench-experiments

1. A scoring head is trained (the trainer's full retrain, ``--epochs`` at most) on the
   first 80% of MovieLens-100k's time and served as version 2 of a recommender model of
   this run, beside the zero-shot model (version 1).
2. Items first rated after the cut leave the catalog; they come back through the items
   topic, as new items, when the rest of the data is streamed.
3. One worker runs an experiment of three arms, a third of the users each: "head" (the
   trained head, no exploration), "head-explore" (the same, with the default exploration:
   one slot in ten) and "zero-shot" (version 1). Each streamed user's last 50 events
   before the cut are replayed first (their histories), then their first 40 events after
   the cut, in rounds: round k is every user's k-th event, produced once every list of
   round k - 1 is out, so each event meets the list its user's previous event made.
   Per arm: impressions (interactions while a list of the arm was shown), hits (the item
   was in it), with 95% Wilson intervals and the two-proportion test of the report
   (``streamrec experiment report``), from the worker's own counters in Redis.
4. Offline, on the same streamed events: each model's NDCG@10 and Recall@10 in the
   time-based protocol (full ranking, seen items masked), to compare with online.
5. New-item reach: a new item whose text is a sequel of a film many users watched, and
   one with unrelated text, are upserted; 100 users click that film (three rounds, a
   second apart), and 100 users who did not watch it click their own last item. Per arm:
   share of the users reached, and seconds from the upsert to the first list with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from bench.inference_common import machine, markdown_table
from serving.model_server.scoring import left_pad
from serving.offline.baselines import zero_shot_mean
from serving.offline.data import Movie, load_movielens
from serving.offline.evaluate import evaluate
from serving.offline.export_head import write_head
from serving.offline.train import score_fn
from serving.trainer.catalog import read_catalog
from serving.trainer.cycle import catalog_rows, event_dataset, train_candidate
from serving.trainer.dataset import Timeline
from serving.trainer.experiments import read_arms
from serving.trainer.sources import SourcedEvent
from serving.trainer.triton_control import load_latest
from serving.trainer.versions import new_model
from stream_app.core.events import ItemUpsert
from stream_app.core.experiment_report import ArmCounts, arm_summary, compare, render
from stream_app.core.settings import Settings, load_settings
from stream_app.devtools.demo import prepare_stack
from stream_app.devtools.devstack import isolated
from stream_app.devtools.kafka_io import TopicReader, ensure_topics
from stream_app.devtools.probes import Triggers
from stream_app.devtools.redis_io import CatalogStore, redis_client
from stream_app.devtools.replay import PlannedEvent, encode, plan_events, produce_raw, replay
from stream_app.devtools.worker_process import WorkerProcess

TRAIN_SHARE_OF_TIME = 0.8
HISTORY_EVENTS = 50
STREAM_EVENTS = 40
"""Events streamed per user: the stream takes as many rounds."""
VAR = Path("var/bench/experiments")
ARMS = [
    {"name": "head", "explore_share": 0.0},
    {"name": "head-explore"},
    {"name": "zero-shot", "model_version": "1", "explore_share": 0.0},
]
UNRELATED_TEXT = "Quarterly VAT returns for sole traders"
REACH_USERS = 100
REACH_ROUNDS = 3


def run(settings: Settings, epochs: int, out: Path) -> dict:
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:6]
    movielens = load_movielens()
    movies = {m.item_id: m for m in movielens.movies}
    planned = [
        replace(e, user_id=f"x{run_id}-{e.user_id}")
        for e in plan_events(movielens.ratings, run_id=run_id, keep_time=True)
    ]
    cut = planned[int(TRAIN_SHARE_OF_TIME * len(planned))].ts
    assert cut is not None
    first_seen: dict[str, float] = {}
    for e in planned:
        first_seen.setdefault(e.item_id, e.ts or 0.0)
    new_items = sorted(i for i, t in first_seen.items() if t >= cut)
    streamed = _first_events([replace(e, ts=None) for e in planned if (e.ts or 0) >= cut])
    print(
        f"training before {time.strftime('%Y-%m-%d', time.gmtime(cut))}; streaming"
        f" {len(streamed):,} events, {len(new_items)} items new after the cut",
        file=sys.stderr,
    )
    with prepare_stack(settings):
        client = redis_client(settings)
        prefix = settings.redis.key_prefix
        catalog = read_catalog(client, prefix)
        pairs = catalog.vectors @ catalog.vectors.T
        above = float(
            (pairs[np.triu_indices(len(pairs), 1)] >= settings.exploration.min_similarity).mean()
        )
        trained = _train(settings, planned, catalog, cut, first_seen, epochs)
        model_name = f"recommender_bench_{run_id}"
        model_dir = _serve(settings, model_name, trained)
        store = CatalogStore(client, prefix)
        vectors = {i: catalog.vectors[catalog.item_ids.index(i)] for i in new_items}
        store.remove(new_items)  # they come back through the items topic, as new items
        try:
            experiment = {"name": f"bench-{run_id}", "arms": ARMS}
            bench = isolated(
                settings,
                f"exp-{run_id}",
                VAR,
                triton={"recommender_model": model_name},
                experiment=experiment,
            )
            ensure_topics(bench.kafka)
            with WorkerProcess(bench, VAR / "worker.log") as worker:
                users = {e.user_id for e in streamed}
                history = _last_events([e for e in planned if (e.ts or 0) < cut], users)
                print("replaying the streamed users' histories", file=sys.stderr)
                _replay_and_wait(bench, [replace(e, ts=None) for e in history], worker)
                before, _ = read_arms(client, bench)
                _upsert(bench, [_item(movies[i]) for i in new_items])
                _wait_for_vectors(client, prefix, new_items)
                print("streaming the events after the cut, in rounds", file=sys.stderr)
                stream = _replay_in_rounds(bench, streamed, worker)
                after, catalog_size = read_arms(client, bench)
                reach = _new_item_reach(bench, client, history + streamed, movies, worker)
        finally:
            store.upsert(
                [_item(movies[i]) for i in new_items],
                np.stack(list(vectors.values())),
                backfill=True,
            )
            _unserve(settings, model_name, model_dir)
    arms = _delta(before, after)
    report = {
        "command": "make bench-experiments  (python -m bench.experiments "
        + " ".join(sys.argv[1:])
        + ")",
        "machine": machine(),
        "trained_before": cut,
        "training": trained["info"],
        "streamed_events": len(streamed),
        "new_items": len(new_items),
        "stream": stream,
        "arms": [arm_summary(a, catalog_size) for a in arms],
        "comparisons": [vars(c) for c in compare(arms)],
        "report_text": render(experiment["name"], arms, catalog_size),
        "offline": trained["offline"],
        "new_item_reach": reach,
        "min_similarity": settings.exploration.min_similarity,
        "item_pairs_at_least_min_similarity": above,
        "seconds": time.monotonic() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    _plot(report, out / "arms.png")
    (out / "README.md").write_text(_readme(report))
    return report


def _train(settings, planned, catalog, cut: float, first_seen: dict, epochs: int) -> dict:
    """The trainer's full retrain on the events before the cut, and each model's offline
    scores on the events after it (the time-based protocol)."""
    item_ids, text, _ = catalog_rows(catalog, ())
    sourced = [SourcedEvent(encode(e, e.ts or 0.0), (0, n)) for n, e in enumerate(planned)]
    dataset = event_dataset(settings, sourced, catalog)
    timeline = Timeline.of(dataset.events, item_ids)
    trainer = settings.trainer.model_copy(update={"full_epochs": epochs})
    cpu = time.process_time()
    result, _ = train_candidate(
        trainer, timeline.until(cut), text, before=cut, checkpoint=None, warm=False, progress=True
    )
    model = result.model.eval()
    added = np.array([-np.inf] + [first_seen.get(i, np.inf) for i in item_ids])
    task = timeline.task(cut, item_added_ts=added)
    offline = {
        "events": len(task.targets),
        "head": _scores(evaluate(score_fn(model), task)),
        "zero-shot": _scores(evaluate(zero_shot_mean(text), task)),
    }
    info = {"epochs_at_most": epochs, "cpu_seconds": time.process_time() - cpu}
    parity = left_pad(task.histories[:50], task.purchased[:50], model.config.max_len)
    return {
        "model": model,
        "item_ids": item_ids,
        "parity": parity,
        "offline": offline,
        "info": info,
    }


def _scores(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("ndcg@10", "recall@10")}


def _serve(settings: Settings, name: str, trained: dict) -> Path:
    """A recommender model of this run: version 1 the zero-shot model, 2 the head."""
    model_dir = new_model(Path(settings.triton.model_repository), name)
    model = trained["model"]
    rows = {int(r) for r in np.nonzero(model.id_rows.numpy())[0]}
    write_head(model, trained["item_ids"], rows, model_dir / "2", "head-bench", *trained["parity"])
    load_latest(settings.triton.url, name, 2, also=[1], model_dir=model_dir)
    return model_dir


def _unserve(settings: Settings, name: str, model_dir: Path) -> None:
    with grpcclient.InferenceServerClient(settings.triton.url) as client:
        client.unload_model(name)
    shutil.rmtree(model_dir, ignore_errors=True)


def _last_events(events: list[PlannedEvent], users: set[str]) -> list[PlannedEvent]:
    """Each user's last HISTORY_EVENTS events (of ``users``), in their order."""
    by_user: dict[str, list[PlannedEvent]] = defaultdict(list)
    for e in events:
        if e.user_id in users:
            by_user[e.user_id].append(e)
    kept = {id(e) for mine in by_user.values() for e in mine[-HISTORY_EVENTS:]}
    return [e for e in events if id(e) in kept]


def _replay_and_wait(settings: Settings, events: list[PlannedEvent], worker) -> dict:
    """Produce the events at full speed; wait until every user's last one has its list."""
    last = {e.user_id: e.event_id for e in events}
    wanted = set(last.values())
    reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)
    triggers = Triggers()
    started = time.monotonic()
    replay(settings.kafka, events)
    done = reader.read_until(
        lambda messages: wanted <= triggers.of(messages),
        timeout_s=600,
    )
    seconds = time.monotonic() - started
    reader.close()
    if not done:
        raise RuntimeError(
            f"not every user got a list: see {VAR / 'worker.log'}\n{worker.log_tail()}"
        )
    return {"events": len(events), "seconds": seconds, "events_per_s": len(events) / seconds}


def _first_events(events: list[PlannedEvent]) -> list[PlannedEvent]:
    """Each user's first STREAM_EVENTS events, in order."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for e in events:
        seen[e.user_id] += 1
        if seen[e.user_id] <= STREAM_EVENTS:
            kept.append(e)
    return kept


def _replay_in_rounds(settings: Settings, events: list[PlannedEvent], worker) -> dict:
    """Round k produces every user's k-th event, then waits until each has its list: every
    event meets the list its user's previous event made, as a user who acts after seeing
    it would (at full speed a user's events share a batch and meet older lists)."""
    rounds: dict[int, list[PlannedEvent]] = defaultdict(list)
    position: dict[str, int] = defaultdict(int)
    for e in events:
        rounds[position[e.user_id]].append(e)
        position[e.user_id] += 1
    reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)
    triggers = Triggers()
    started = time.monotonic()
    for number in sorted(rounds):
        wanted = {e.event_id for e in rounds[number]}
        replay(settings.kafka, rounds[number], progress=False)
        done = reader.read_until(lambda ms, wanted=wanted: wanted <= triggers.of(ms), 120)
        if not done:
            raise RuntimeError(f"round {number} unanswered:\n{worker.log_tail()}")
        sys.stderr.write(f"\rround {number + 1}/{len(rounds)}")
    sys.stderr.write("\n")
    seconds = time.monotonic() - started
    reader.close()
    return {
        "events": len(events),
        "rounds": len(rounds),
        "seconds": seconds,
        "events_per_s": len(events) / seconds,
    }


def _item(movie: Movie) -> ItemUpsert:
    return ItemUpsert(movie.item_id, movie.title, movie.text, movie.genres)


def _upsert(settings: Settings, items: list[ItemUpsert]) -> None:
    kafka = settings.kafka
    values = [
        (
            i.item_id.encode(),
            json.dumps({"item_id": i.item_id, "title": i.title, "text": i.text}).encode(),
        )
        for i in items
    ]
    produce_raw(kafka, kafka.items_topic, values)


def _wait_for_vectors(client, prefix: str, item_ids: list[str], timeout_s: float = 60) -> None:
    key = f"{prefix}{{catalog}}:vectors"
    deadline = time.monotonic() + timeout_s
    while not all(client.hexists(key, i) for i in item_ids):
        if time.monotonic() > deadline:
            raise RuntimeError("new items were never encoded and stored")
        time.sleep(0.2)


def _delta(before: list[ArmCounts], after: list[ArmCounts]) -> list[ArmCounts]:
    """The stream's own counts: what the worker counted after the histories were in."""
    old = {a.arm: a for a in before}
    return [
        ArmCounts(
            a.arm,
            {k: v - old[a.arm][k] for k, v in a.counts.items()},
            a.distinct_items,
            a.shadow,
        )
        for a in after
    ]


def _new_item_reach(settings, client, events: list[PlannedEvent], movies: dict, worker) -> dict:
    """A sequel of the film most users just watched, and an unrelated new item: who gets
    them, per arm, and how soon after the upsert."""
    recent: dict[str, list[str]] = defaultdict(list)
    for e in events:
        recent[e.user_id] = (recent[e.user_id] + [e.item_id])[-10:]
    counts: dict[str, int] = defaultdict(int)
    for items in recent.values():
        for item in set(items):
            counts[item] += 1
    anchor = movies[max(counts, key=lambda i: counts[i])]
    # Fans: users who click the anchor now; others: users without it in their last ten,
    # who click their own last item again.
    users = list(recent)
    fans = users[:REACH_USERS]
    others = [u for u in users[REACH_USERS:] if anchor.item_id not in recent[u]][:REACH_USERS]
    sequel_id, unrelated_id = f"{anchor.item_id}-sequel-{uuid.uuid4().hex[:6]}", "vat-guide"
    sequel_text = f"{anchor.title} Part II {' '.join(anchor.genres)}"
    reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)
    reader.drain(quiet_s=1.0)
    upserted = time.time()
    _upsert(
        settings,
        [
            ItemUpsert(sequel_id, f"{anchor.title} Part II", sequel_text),
            ItemUpsert(unrelated_id, "VAT returns", UNRELATED_TEXT),
        ],
    )
    clicks = []
    for round_number in range(REACH_ROUNDS):
        batch = [
            PlannedEvent(u, f"reach-{round_number}-{u}", anchor.item_id, "click") for u in fans
        ]
        batch += [
            PlannedEvent(u, f"reach-{round_number}-{u}", recent[u][-1], "click") for u in others
        ]
        replay(settings.kafka, batch, progress=False)
        clicks += batch
        time.sleep(1.0)
    wanted = {e.event_id for e in clicks}
    triggers = Triggers()
    reader.read_until(lambda messages: wanted <= triggers.of(messages), timeout_s=60)
    first: dict[str, float] = {}
    arm_of: dict[str, str] = {}
    unrelated: set[str] = set()
    reasons: dict[str, int] = defaultdict(int)
    for m in (json.loads(m.value()) for m in reader.messages):
        if not m["trigger_event_id"].startswith("reach-"):
            continue
        arm_of[m["user_id"]] = m["arm"]
        ids = {i["item_id"]: i["reason"] for i in m["items"]}
        if unrelated_id in ids:
            unrelated.add(m["user_id"])
        if sequel_id in ids and m["user_id"] not in first:
            first[m["user_id"]] = m["generated_at"] - upserted
            reasons[ids[sequel_id]] += 1
    reader.close()
    key = f"{settings.redis.key_prefix}{{catalog}}:vectors"
    sequel_vector, anchor_vector, unrelated_vector = (
        np.frombuffer(client.hget(key, i), "<f4") for i in (sequel_id, anchor.item_id, unrelated_id)
    )
    per_arm = {}
    for arm in (a["name"] for a in ARMS):
        mine = [u for u in fans if arm_of.get(u) == arm]
        reached = sorted(first[u] for u in mine if u in first)
        per_arm[arm] = {
            "fans": len(mine),
            "reached": len(reached),
            "reached_share": len(reached) / len(mine) if mine else 0.0,
            "seconds_to_first_list_median": float(np.median(reached)) if reached else None,
            "seconds_to_first_list_max": max(reached) if reached else None,
            "others_reached": sum(1 for u in others if arm_of.get(u) == arm and u in first),
            "others": sum(1 for u in others if arm_of.get(u) == arm),
        }
    return {
        "anchor": anchor.text,
        "sequel_text": sequel_text,
        "unrelated_text": UNRELATED_TEXT,
        "rounds": REACH_ROUNDS,
        "by_arm": per_arm,
        "sequel_reasons": dict(reasons),
        "unrelated_reached_users": len(unrelated),
        "sequel_anchor_similarity": float(sequel_vector @ anchor_vector),
        "unrelated_anchor_similarity": float(unrelated_vector @ anchor_vector),
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in report["arms"] if "hit_rate" in a]
    fig, (online, reach) = plt.subplots(1, 2, figsize=(10, 4))
    rates = [a["hit_rate"] for a in arms]
    errors = [
        [r - a["ci95"][0] for r, a in zip(rates, arms)],
        [a["ci95"][1] - r for r, a in zip(rates, arms)],
    ]
    online.bar([a["arm"] for a in arms], rates, yerr=errors, capsize=6, color="#4c72b0")
    online.set_ylabel("hits per impression (95% CI)")
    online.set_title("MovieLens stream after the cut, by arm")
    by_arm = report["new_item_reach"]["by_arm"]
    reach.bar(list(by_arm), [v["reached_share"] for v in by_arm.values()], color="#55a868")
    reach.set_ylim(0, 1)
    reach.set_ylabel("share of fans reached")
    reach.set_title(f"new sequel, {report['new_item_reach']['rounds']} clicks after its upsert")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _readme(report: dict) -> str:
    arms = [a for a in report["arms"] if "hit_rate" in a]
    rows = [
        (
            a["arm"],
            int(a["impressions"]),
            int(a["hits"]),
            a["hit_rate"],
            f"{a['ci95'][0]:.4f} to {a['ci95'][1]:.4f}",
            a["catalog_coverage"],
            a["long_tail_share"],
            a["new_item_share"],
            int(a["explored_items"]),
            int(a["explore_hits"]),
        )
        for a in arms
    ]
    tests = [
        (
            c["arm"],
            c["control"],
            c["difference"],
            c["relative"],
            c["z"],
            c["p_value"],
            c["conclusive"],
        )
        for c in report["comparisons"]
    ]
    offline = report["offline"]
    offline_rows = [
        (m, offline[m]["ndcg@10"], offline[m]["recall@10"]) for m in ("head", "zero-shot")
    ]
    reach = report["new_item_reach"]
    training = report["training"]
    cut_day = time.strftime("%Y-%m-%d", time.gmtime(report["trained_before"]))
    headers = ("arm", "impressions", "hits", "hit rate", "95% CI", "coverage", "long tail")
    headers += ("new-item share", "explored", "explore hits")
    reach_rows = [
        (
            arm,
            f"{v['reached']}/{v['fans']}",
            v["reached_share"],
            v["seconds_to_first_list_median"]
            if v["seconds_to_first_list_median"] is not None
            else float("nan"),
            v["seconds_to_first_list_max"]
            if v["seconds_to_first_list_max"] is not None
            else float("nan"),
            f"{v['others_reached']}/{v['others']}",
        )
        for arm, v in reach["by_arm"].items()
    ]
    reach_headers = ("arm", "fans reached", "share", "median s", "max s", "others reached")
    return f"""# Experiments and exploration on a MovieLens stream

`{report["command"]}`, {report["machine"]["date"]}, {report["machine"]["nproc"]} CPUs
({report["machine"]["cpu"]}); {report["seconds"] / 60:.0f} min in all.

A head trained (at most {training["epochs_at_most"]} epochs, {training["cpu_seconds"]:.0f} CPU s)
on MovieLens-100k before {cut_day} (80% of its time), then the
{report["streamed_events"]:,} events after the cut streamed through Kafka and one worker at
{report["stream"]["events_per_s"]:.0f} events/s, users split in three arms; {report["new_items"]}
items first rated after the cut arrive through the items topic as new items as the stream
starts. How it is run: the docstring of `bench/experiments.py`.

![hit rate by arm, new-item reach by arm](arms.png)

## Online, by arm (the worker's counters, as `streamrec experiment report` reads them)

{markdown_table(headers, rows)}

Two-proportion z-test on hits per impression against `head`, two-sided, alpha 0.05 with
Bonferroni over the comparisons:

{markdown_table(("arm", "against", "difference", "relative", "z", "p", "conclusive"), tests)}

## Offline, the same streamed events (time-based protocol, full ranking)

{markdown_table(("model", "NDCG@10", "Recall@10"), offline_rows)}

over {offline["events"]:,} events whose item was new to its user.

## A new item, and who gets it

Anchor: `{reach["anchor"]}`, the film most often among the users' last ten. A new item
`{reach["sequel_text"]}` and an unrelated one (`{reach["unrelated_text"]}`) are
upserted; then 100 users ("fans") click the anchor and 100 who did not watch it click their
own last item, {reach["rounds"]} rounds a second apart. Reached: a list with the sequel;
seconds from the upsert to that first list (encoding, the catalog log, the click and the
ranking included).

{markdown_table(reach_headers, reach_rows)}

The sequel was shown as {reach["sequel_reasons"]}; the unrelated item reached
{reach["unrelated_reached_users"]} users. Cosine similarity (served encoder) to the anchor:
sequel {reach["sequel_anchor_similarity"]:.3f}, unrelated item
{reach["unrelated_anchor_similarity"]:.3f}; of all pairs of MovieLens items,
{report["item_pairs_at_least_min_similarity"]:.2%} have a cosine of at least
`min_similarity` ({report["min_similarity"]}).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="most epochs of the head")
    parser.add_argument("--out", type=Path, default=Path("bench/results/experiments"))
    args = parser.parse_args()
    report = run(load_settings(), args.epochs, args.out)
    print(report["report_text"])


if __name__ == "__main__":
    main()
