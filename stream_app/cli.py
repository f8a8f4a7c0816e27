"""``streamrec`` command line: up | worker | catalog | replay | export | train | evaluate |
sasrec | finetune | distill | trainer | model | encoder | demo | bench."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from serving.offline.commands import add_offline_commands
from serving.trainer.commands import (
    add_trainer_commands,
    encoder_command,
    experiment_command,
    model_command,
    trainer_command,
)
from stream_app.core import logs
from stream_app.core.errors import ConfigError, StackError
from stream_app.core.settings import Settings, load_settings

logger = logging.getLogger(__name__)


def cmd_up(settings: Settings, args: argparse.Namespace) -> None:
    from stream_app.devtools.demo import prepare_stack

    # Ctrl-C and SIGTERM both end in the stack's clean stop, even where the shell that
    # started us ignores SIGINT (background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with prepare_stack(settings) as stack:
        print(f"stack ready: started={stack.started} reused={stack.reused}")
        print(f"  kafka  {settings.kafka.bootstrap}")
        print(f"  redis  {settings.redis.url}")
        print(
            f"  triton grpc {settings.triton.url}, "
            f"metrics http://127.0.0.1:{settings.triton.metrics_port}/metrics"
        )
        print("Ctrl-C stops what was started.")
        while True:
            time.sleep(1)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from stream_app.worker.app import run_worker

    run_worker(settings)


def cmd_catalog(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.data import load_movielens
    from stream_app.devtools.catalog_loader import load_catalog

    size = load_catalog(settings, list(load_movielens().movies), force=args.force)
    print(f"catalog: {size} items in Redis under {settings.redis.key_prefix!r}")


def cmd_replay(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.data import load_movielens
    from stream_app.devtools.kafka_io import ensure_topics
    from stream_app.devtools.replay import plan_events, replay

    ensure_topics(settings.kafka)
    events = list(plan_events(load_movielens().ratings, run_id=args.run_id))[: args.limit]
    stats = replay(settings.kafka, events, rate_per_s=args.rate)
    print(
        f"replayed {stats['events']:.0f} events in {stats['seconds']:.1f}s "
        f"({stats['events_per_s']:,.0f}/s) to {settings.kafka.interactions_topic}"
    )


def cmd_export(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.export_encoder import export_item_embedder

    version_dir = export_item_embedder(
        Path(settings.triton.model_repository), args.force, args.version, args.adapter, args.int8
    )
    print(f"item_embedder exported to {version_dir}")


def cmd_train(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.runs import train_command

    train_command(args, Path(settings.triton.model_repository))


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.runs import evaluate_command

    evaluate_command(args)


def cmd_sasrec(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.runs import sasrec_command

    sasrec_command(args)


def cmd_distill(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.distill_encoder import distill_command

    distill_command(args)


def cmd_finetune(settings: Settings, args: argparse.Namespace) -> None:
    from serving.offline.finetune_encoder import finetune_command

    finetune_command(args)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> None:
    from stream_app.devtools.demo import run_demo

    run_demo(settings, events=args.events, rate_per_s=args.rate)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> None:
    from bench.pipeline import run_bench

    run_bench(
        settings,
        events=args.events,
        users=args.users,
        rate=args.rate,
        latency_s=args.latency_s,
        naive_events=args.naive_events,
        floor=not args.no_floor,
        workers=args.workers,
        profile=args.profile,
        out=args.out,
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="streamrec", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local broker, Redis and Triton and wait")
    sub.add_parser("worker", help="run the Faust stream worker")
    catalog = sub.add_parser("catalog", help="encode MovieLens items through Triton into Redis")
    catalog.add_argument("--force", action="store_true", help="re-encode even if loaded")
    replay = sub.add_parser("replay", help="produce MovieLens ratings as live events")
    replay.add_argument("--limit", type=int, default=5000, help="events to produce")
    replay.add_argument("--rate", type=float, default=1000.0, help="events per second (0 = max)")
    replay.add_argument("--run-id", default="", help="distinguishes event ids between runs")
    export = sub.add_parser("export", help="export the item encoder to ONNX for Triton")
    export.add_argument("--force", action="store_true", help="export even if present")
    export.add_argument("--version", type=int, default=1, help="item_embedder version to write")
    export.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="a LoRA adapter (streamrec finetune) merged into the bundled encoder; version > 1",
    )
    export.add_argument(
        "--int8", action="store_true", help="version 1's graph with dynamic INT8 weights"
    )
    add_offline_commands(sub)
    add_trainer_commands(sub)
    demo = sub.add_parser("demo", help="stack + worker + short replay, prints live results")
    demo.add_argument("--events", type=int, default=3000, help="events to replay")
    demo.add_argument("--rate", type=float, default=1000.0, help="events per second")
    bench = sub.add_parser("bench", help="pipeline benchmark vs a naive baseline (make bench)")
    bench.add_argument("--events", type=int, default=50_000, help="events at full speed")
    bench.add_argument("--users", type=int, default=1000, help="distinct users")
    bench.add_argument(
        "--rate", type=float, default=None, help="skip full speed; latency at this rate"
    )
    bench.add_argument(
        "--latency-s", type=float, default=20.0, help="length of the fixed-rate phase"
    )
    bench.add_argument("--naive-events", type=int, default=4000, help="0 skips the baseline")
    bench.add_argument("--no-floor", action="store_true", help="skip the floor phase")
    bench.add_argument("--workers", type=int, default=1, help="worker processes (one group)")
    bench.add_argument("--profile", action="store_true", help="py-spy the worker at full speed")
    bench.add_argument("--out", type=Path, default=Path("bench/results/pipeline"))
    return root


COMMANDS = {
    "up": cmd_up,
    "worker": cmd_worker,
    "catalog": cmd_catalog,
    "replay": cmd_replay,
    "export": cmd_export,
    "demo": cmd_demo,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sasrec": cmd_sasrec,
    "finetune": cmd_finetune,
    "distill": cmd_distill,
    "trainer": trainer_command,
    "model": model_command,
    "encoder": encoder_command,
    "experiment": experiment_command,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
        logs.configure(settings.log_level)
        COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"streamrec: {exc}", file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"streamrec: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
