"""The benchmark's own arithmetic: percentiles, the event plan, the profile summary, the
verdicts and time split it prints. (The benchmark itself runs with `make bench`.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.ab_table import run_row
from bench.ab_table import table as ab_table
from bench.encoder_compression import served_choice
from bench.head_vs_sasrec import report as head_vs_sasrec
from bench.id_scale import chosen_scale
from bench.pipeline import plan
from bench.profile import top_functions
from bench.read_api import stream_latency
from bench.report import split_table, verdicts
from bench.sasrec_check import ndcg_at_10, paired
from stream_app.devtools.stats import percentile


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0  # 3 of 5 at or below it, not 2
    assert math.isnan(percentile([], 50))


def test_plan_is_reproducible_and_keeps_to_its_users():
    items = ["1", "1", "1", "2"]
    events = plan(2000, users=7, run="r", items=items, seed=4)
    assert events == plan(2000, users=7, run="r", items=items, seed=4)
    assert len({e.event_id for e in events}) == 2000
    assert {e.user_id for e in events} == {f"r-u{i}" for i in range(7)}
    share_popular = sum(e.item_id == "1" for e in events) / len(events)
    assert 0.7 < share_popular < 0.8  # drawn like the ratings list
    assert 0.15 < sum(e.type == "purchase" for e in events) / len(events) < 0.25


def test_top_functions_counts_self_and_inclusive_samples():
    collapsed = "\n".join(
        [
            "main (app.py:1);process (agents.py:10);loads (json.py:5) 30",
            "main (app.py:1);process (agents.py:10) 50",
            "main (app.py:1);send (kafka.py:3) 20",
        ]
    )
    rows = top_functions(collapsed)
    assert rows[2] == "| 50.0 | 80.0 | `process (agents.py:10)` |"
    assert rows[3] == "| 30.0 | 30.0 | `loads (json.py:5)` |"
    assert "`main (app.py:1)`" not in "".join(rows)  # never the running frame


def phase(kind, events_per_s, p99=None, rate=None, split=None):
    return {
        "kind": kind,
        "events_per_s": events_per_s,
        "latency_ms": {"p99": p99} if p99 is not None else {},
        "target_rate": rate,
        "split_s": split or {},
        "workers": 1,
    }


def test_verdicts_state_the_ratios_and_the_latency_target():
    lines = verdicts(
        [
            phase("full speed", 2400.0),
            phase("fixed rate", 1200.0, p99=300.0, rate=1200.0),
            phase("floor", 9600.0),
            phase("naive baseline", 100.0),
        ]
    )
    assert "**24.0x** (target 20x: met)" in lines[0]
    assert "9,600 events/s, so StreamRec runs at **25.0%** of it (target 30%: NOT met)" in lines[1]
    assert "p99 **300 ms** (target < 250 ms: NOT met)" in lines[2]


def test_split_table_shares_of_wall_time():
    split = {
        "wall": 10.0,
        "batch": 8.0,
        "batches": 40,
        "redis": 2.0,
        "triton": 3.0,
        "kafka publish": 1.0,
    }
    (row,) = split_table([phase("full speed", 1.0, split=split) | {"events": 800}])[4:]
    assert row == "| optimised, full speed | 40 | 20 | 200 | 20% | 30% | 10% | 20% | 20% |"


def test_the_sasrec_check_pairs_users_and_tests_the_difference():
    assert ndcg_at_10(np.array([0, 1, 9, 10])).tolist() == [
        1.0,
        1 / np.log2(3),
        1 / np.log2(11),
        0.0,
    ]
    rng = np.random.default_rng(1)
    reference = rng.uniform(0, 0.2, 500)
    same = paired(reference, reference)
    assert (same["difference"], same["p_value"]) == (0.0, 1.0)
    better = paired(reference + 0.02, reference)
    assert better["relative"] > 0 and better["p_value"] < 0.001
    assert better["ci95_low"] == pytest.approx(0.02) == better["ci95_high"]
    noisy = paired(reference + rng.normal(0, 0.05, 500), reference)
    assert noisy["ci95_low"] < noisy["difference"] < noisy["ci95_high"] and noisy["p_value"] > 0.01


def test_the_head_is_compared_with_sasrec_user_by_user_against_the_goal():
    users = [str(u) for u in range(400)]

    def run(ranks) -> dict:
        figures = {"ndcg@10": 0.0, "recall@10": 0.0, "best_epoch": 3, "train_seconds": 1.0}
        return {"test": figures, "ranks": dict(zip(users, ranks))}

    sasrec = run([0, 20] * 200)  # half the users hit at the top, half miss
    text, result = head_vs_sasrec([run([0] * 300 + [20] * 100)], [sasrec], ["make head"])
    assert result["relative"] == pytest.approx(0.5) and result["goal_met"]
    assert "Goal (>= +10%, p < 0.05): met" in text and "- `make head`" in text
    _, close = head_vs_sasrec([run([0] * 210 + [20] * 190)], [sasrec], [])
    assert close["relative"] == pytest.approx(0.05) and not close["goal_met"]
    with pytest.raises(ValueError, match="same test users"):
        head_vs_sasrec([{"ranks": {"1": 0}, "test": {}}], [sasrec], [])


def test_the_served_encoder_is_the_fastest_at_3x_eager_within_2_percent_of_fp32():
    def variant(items_per_s: float, speedup: float, relative: float) -> dict:
        return {
            "items_per_s": items_per_s,
            "speedup_vs_eager": speedup,
            "vs_fp32": {"relative": relative},
        }

    fp32 = variant(300, 1.5, 0.0)
    assert served_choice({"fp32": fp32, "int8": variant(700, 3.5, -0.019)}) == "int8"
    assert served_choice({"fp32": fp32, "int8": variant(700, 3.5, -0.021)}) is None
    assert served_choice({"fp32": fp32, "int8": variant(590, 2.95, 0.01)}) is None
    both = {"fp32": fp32, "a": variant(700, 3.5, 0.0), "b": variant(800, 4.0, -0.01)}
    assert served_choice(both) == "b"


def test_the_id_scale_ranks_new_items_best_without_costing_known_ones_over_1_percent():
    standard = {1.0: 0.1000, 0.8: 0.0995, 0.6: 0.0991, 0.5: 0.0989}
    cold = {1.0: 0.030, 0.8: 0.035, 0.6: 0.038, 0.5: 0.041}
    assert chosen_scale(standard, cold) == 0.6  # 0.5 costs 1.1% on known items
    assert chosen_scale(standard, {1.0: 0.04, 0.8: 0.03, 0.6: 0.03, 0.5: 0.05}) == 1.0
    assert chosen_scale({1.0: 0.1, 0.8: 0.08}, {1.0: 0.01, 0.8: 0.09}) == 1.0


def test_stream_latency_takes_the_lists_of_events_produced_in_the_phase():
    produced = {"a": 10.0, "b": 11.0, "c": 12.5, "d": 20.0}
    bodies = [
        {"trigger_event_id": t, "event_ts": ts, "generated_at": ts + lag}
        for t, ts, lag in [("a", 10.0, 0.1), ("c", 12.5, 0.3), ("d", 20.0, 9.0), ("x", 11, 5)]
    ]  # "b" shared a batch with "c": one list; "x" is not the stream's
    phase = stream_latency(bodies, produced, since=10.0, until=13.0)
    assert (phase["events"], phase["lists"]) == (3, 2)
    assert phase["p50_ms"] == pytest.approx(100.0) and phase["p99_ms"] == pytest.approx(300.0)


def test_the_scale_table_and_capacity_model_come_from_the_runs():
    from bench.scale_table import capacity, table

    def run(workers, fast, floor, naive, cpu):
        kinds = {"full speed": fast, "floor": floor, "naive baseline": naive, "fixed rate": fast}
        return {
            "settings": {"workers": workers, "partitions": 8},
            "phases": [
                {
                    "kind": kind,
                    "events_per_s": rate,
                    "latency_ms": {"p99": 200.0},
                    "cpu_ms_per_event": cpu,
                }
                for kind, rate in kinds.items()
            ],
        }

    cpu = {"worker": 0.5, "triton": 0.25, "redis": 0.1, "broker": 0.2, "total": 1.05}
    one, two = run(1, 500.0, 2000.0, 50.0, cpu), run(2, 900.0, 3000.0, 60.0, cpu)
    rows = table([one, two])[2:]
    assert rows[1] == "| 2 | 8 | 900 | 1.80x | 0.50 / 1.05 | 3,000 | 30% | 60 | 15.0x | 200 |"
    worker, triton = capacity(two, rate=10_000)[2:4]
    # 10,000 events/s at 0.5 ms each: 5 cores, 10 at half load.
    assert worker == "| worker | 0.500 | 2,000 | 5.0 | 10 |"
    assert triton == "| triton | 0.250 | 4,000 | 2.5 | 5 |"


def _bench_result(events_per_s: float, cpu_total: float) -> dict:
    def phase(kind: str, rate: float, cpu: float = 1.0) -> dict:
        return {
            "kind": kind,
            "events_per_s": rate,
            "latency_ms": {"p99": 200.0},
            "cpu_ms_per_event": {"worker": cpu / 2, "total": cpu},
        }

    return {
        "phases": [
            phase("full speed", events_per_s, cpu_total),
            phase("fixed rate", events_per_s / 2, 2 * cpu_total),
            phase("floor", 4 * events_per_s),
            phase("naive baseline", 100.0),
        ]
    }


def test_the_ab_table_gives_each_run_each_side_s_mean_and_the_ratio():
    runs = {
        "base1": ("d", run_row(_bench_result(1000.0, 2.0))),
        "new1": ("d", run_row(_bench_result(1500.0, 1.0))),
        "base2": ("d", run_row(_bench_result(1000.0, 2.0))),
    }
    lines = ab_table(runs).splitlines()
    assert lines[2].startswith("| base1 | d | 1,000 | 10.0x | 25.0% | 200 | 1.00 | 2.00 |")
    assert "**mean base** (2 runs)" in lines[5] and "**mean new** (1 runs)" in lines[6]
    # new / base: 1.5x the rate, half the CPU per event
    assert lines[7].startswith("| **new / base** |  | 1.50 | 1.50 | 1.00 | 1.00 | 0.50 | 0.50 |")


def test_the_ab_table_takes_fixed_rate_runs_alone():
    def rate_only(cpu_total: float) -> dict:
        full = _bench_result(1000.0, cpu_total)
        return {"phases": [p for p in full["phases"] if p["kind"] == "fixed rate"]}

    runs = {"a1": ("d", run_row(rate_only(2.0))), "b1": ("d", run_row(rate_only(1.0)))}
    lines = ab_table(runs).splitlines()
    assert lines[2].startswith("| a1 | d | - | - | - | 200 | - | - | 2.00 | 4.00 |")
    assert lines[-1] == "| **b / a** |  | - | - | - | 1.00 | - | - | 0.50 | 0.50 |"
