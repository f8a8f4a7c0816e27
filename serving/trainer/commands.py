"""``streamrec trainer``, ``streamrec model list | promote VERSION | rollback | discard``,
``streamrec encoder roll | retire VERSION`` and ``streamrec experiment apply | report``.

Arguments only at import (the CLI builds its parser without loading torch); each handler
imports what it runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from stream_app.core.settings import Settings


def add_trainer_commands(sub) -> None:
    trainer = sub.add_parser(
        "trainer",
        help="train on the interactions topic, continuously; promote what passes the gate",
    )
    trainer.add_argument("--once", action="store_true", help="one cycle, then exit (a CronJob)")
    kind = trainer.add_mutually_exclusive_group()
    kind.add_argument("--full", action="store_true", default=None, help="retrain from scratch")
    kind.add_argument("--warm", dest="full", action="store_false", help="warm-start from live")
    source = trainer.add_mutually_exclusive_group()
    source.add_argument("--file", type=Path, help="JSON lines of interaction events, not the topic")
    source.add_argument(
        "--from-time", type=_time, help="read the topic from this time (ISO 8601 or epoch s)"
    )
    source.add_argument("--from-offsets", help="read the topic from these offsets: 0:120,1:98")
    model = sub.add_parser("model", help="the recommender's versions: list, promote, roll back")
    actions = model.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every version, the live one marked")
    promote = actions.add_parser("promote", help="serve VERSION again (as a new version)")
    promote.add_argument("version", type=int)
    actions.add_parser("rollback", help="serve the version that was live before this one")
    actions.add_parser("discard", help="end the candidate's trial (online gate): discard it")
    encoder = sub.add_parser(
        "encoder", help="item encoder versions: roll a new one out, retire an old one"
    )
    moves = encoder.add_subparsers(dest="action", required=True)
    roll = moves.add_parser(
        "roll", help="serve item_embedder VERSION, encode the catalog with it, train on it"
    )
    roll.add_argument("version", type=int)
    retire = moves.add_parser("retire", help="drop VERSION's vectors (no head may rank with it)")
    retire.add_argument("version", type=int)
    experiment = sub.add_parser(
        "experiment", help="the configured experiment: serve its arms' versions, compare arms"
    )
    steps = experiment.add_subparsers(dest="action", required=True)
    steps.add_parser("apply", help="have Triton serve every version the arms name")
    report = steps.add_parser("report", help="the arms side by side, with a significance test")
    report.add_argument("--alpha", type=float, default=0.05, help="significance level")
    report.add_argument("--json", action="store_true", help="figures as JSON")


def trainer_command(settings: Settings, args: argparse.Namespace) -> None:
    from serving.trainer.service import run_trainer
    from serving.trainer.sources import StartAt

    start = (
        StartAt.parse_offsets(args.from_offsets)
        if args.from_offsets
        else StartAt(time_s=args.from_time)
    )
    run_trainer(settings, args.once, full=args.full, file=args.file, start=start)


def model_command(settings: Settings, args: argparse.Namespace) -> None:
    from serving.trainer.online_gate import CandidateSlot, end_trial
    from serving.trainer.triton_control import load_served
    from serving.trainer.versions import ModelRepository

    repository = ModelRepository.of(settings.triton)
    if args.action == "list":
        print(versions_table(repository))
        candidate = CandidateSlot(repository, settings.triton.candidate_model).current()
        if candidate is not None:
            began = _utc(candidate.provenance["trial"]["started_at"])
            print(f"on trial since {began} UTC: {candidate.model_version} ({candidate.path})")
        return
    if args.action == "discard":
        ended = end_trial(settings, repository)
        print(f"discarded {ended.model_version}" if ended else "no candidate is on trial")
        return
    version = (
        repository.promote(args.version) if args.action == "promote" else repository.rollback()
    )
    try:
        seconds = load_served(settings, version.number)
    except Exception:
        repository.remove(version)  # Triton keeps serving what it served
        raise
    origin = version.provenance["promoted_from"]
    print(
        f"version {version.number} ({version.model_version}, a copy of version {origin}) is"
        f" live: Triton loaded it in {seconds:.1f} s"
    )


def encoder_command(settings: Settings, args: argparse.Namespace) -> None:
    from serving.model_server.redis_connection import connect_redis
    from serving.trainer.encoders import retire, roll_out

    client = connect_redis(settings.redis)
    if args.action == "retire":
        deleted = retire(settings, client, args.version)
        print(f"encoder {args.version} retired: {deleted} vectors deleted")
        return
    report = roll_out(settings, client, args.version)
    print(
        f"encoder {report.version}: {report.written} of {report.items} items encoded"
        f" ({report.changed_meanwhile} changed meanwhile, written by the worker) in"
        f" {report.seconds:.1f} s; the set is now {report.encoders}. The trainer's next cycle"
        f" trains a full head on it (streamrec trainer --once --full to do it now)."
    )


def experiment_command(settings: Settings, args: argparse.Namespace) -> None:
    from serving.model_server.redis_connection import connect_redis
    from serving.trainer.experiments import apply_experiment, read_arms
    from stream_app.core.experiment_report import arm_summary, compare, render

    if args.action == "apply":
        versions, seconds = apply_experiment(settings)
        print(f"Triton serves recommender versions {versions} (loaded in {seconds:.1f} s)")
        return
    client = connect_redis(settings.redis)
    arms, catalog_size = read_arms(client, settings)
    if not args.json:
        print(render(settings.experiment.name, arms, catalog_size, args.alpha))
        return
    figures = {
        "experiment": settings.experiment.name,
        "arms": [arm_summary(a, catalog_size) for a in arms],
        "comparisons": [vars(c) for c in compare(arms, args.alpha)],
    }
    print(json.dumps(figures, indent=2))


def versions_table(repository) -> str:
    """One row per version, the live one (the highest: Triton serves it) marked."""
    versions = repository.versions()
    header = ("version", "live", "model_version", "trained until (UTC)", "age", "gate", "made by")
    rows = [header]
    now = time.time()
    for v in versions:
        until, gate = v.trained_until_ts, v.provenance.get("gate")
        origin = v.provenance.get("promoted_from")
        rows.append(
            (
                str(v.number),
                "*" if v is versions[-1] else "",
                v.model_version,
                _utc(until),
                _age(now - until) if until is not None else "-",
                # NDCG@10 on the held-back events: candidate / live version then
                f"{gate['candidate']['ndcg@10']:.4f}/{gate['live']['ndcg@10']:.4f}"
                if gate
                else "-",
                f"copy of {origin} ({v.provenance.get('promotion')})"
                if origin
                else v.provenance.get("mode") or v.provenance.get("source", "git (zero-shot)"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or epoch seconds: {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
