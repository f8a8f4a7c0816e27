"""An experiment's arms compared: counts in, a table and a significance test out. Pure.

The unit is an impression: a user's first-time interaction while a list of the arm was
on show; it is a hit when the item was in that list. Each treatment arm is compared with
the first published arm (the control) by a two-sided two-proportion z-test on hits per
impression, with the pooled rate under the null hypothesis. A difference is called
conclusive when its p-value is below alpha / (number of comparisons) (Bonferroni) and
both arms have at least ``min_impressions``. The test is fixed-horizon: decide once, at
the planned size; looking again and again and stopping at the first small p-value makes
false wins likelier. Impressions of one user are not independent, so with few users the
interval is too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_app.core.quality import POSITION_BUCKETS

Z95 = 1.959963984540054
POSITIONS = tuple(label for _, label in POSITION_BUCKETS) + ("11+",)
COUNTERS = (
    "lists",
    "degraded",
    "items",
    "long_tail",
    "new_items",
    "explored",
    "impressions",
    "hits",
    "explore_hits",
    "shadow_lists",
    "shadow_slots",
    "overlap_items",
) + tuple(f"hits@{p}" for p in POSITIONS)
"""What the worker counts per arm (Redis hash fields ``<arm>|<counter>``)."""


@dataclass(frozen=True)
class ArmCounts:
    arm: str
    counts: Mapping[str, float] = field(default_factory=dict)
    distinct_items: int = 0  # items shown at least once (HyperLogLog)
    shadow: bool = False

    def __getitem__(self, counter: str) -> float:
        return self.counts.get(counter, 0)

    @property
    def hit_rate(self) -> float:
        return _share(self["hits"], self["impressions"])


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def wilson_interval(hits: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound near 0, unlike the normal one)."""
    if n <= 0:
        return (0.0, 1.0)
    p, z2 = hits / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Comparison:
    arm: str
    control: str
    difference: float  # treatment rate - control rate
    relative: float  # difference / control rate (0 where the control has none)
    z: float
    p_value: float
    conclusive: bool


def two_proportion_test(
    hits_a: float, n_a: float, hits_b: float, n_b: float
) -> tuple[float, float]:
    """(z, two-sided p) for rate b - rate a, pooled variance under equal rates."""
    if n_a <= 0 or n_b <= 0:
        return 0.0, 1.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return 0.0, 1.0
    z = (hits_b / n_b - hits_a / n_a) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def compare(
    arms: Sequence[ArmCounts], alpha: float = 0.05, min_impressions: int = 100
) -> list[Comparison]:
    """Every published arm after the first against the first."""
    published = [a for a in arms if not a.shadow]
    if len(published) < 2:
        return []
    control, treatments = published[0], published[1:]
    threshold = alpha / len(treatments)
    results = []
    for arm in treatments:
        z, p = two_proportion_test(
            control["hits"], control["impressions"], arm["hits"], arm["impressions"]
        )
        enough = min(control["impressions"], arm["impressions"]) >= min_impressions
        difference = arm.hit_rate - control.hit_rate
        results.append(
            Comparison(
                arm.arm,
                control.arm,
                difference,
                _share(difference, control.hit_rate),
                z,
                p,
                enough and p < threshold,
            )
        )
    return results


def arm_summary(arm: ArmCounts, catalog_size: int) -> dict[str, Any]:
    """One arm's figures, as the report and the benchmark files show them."""
    if arm.shadow:
        return {
            "arm": arm.arm,
            "shadow_lists": arm["shadow_lists"],
            "overlap_at_k": _share(arm["overlap_items"], arm["shadow_slots"]),
        }
    low, high = wilson_interval(arm["hits"], arm["impressions"])
    return {
        "arm": arm.arm,
        "lists": arm["lists"],
        "impressions": arm["impressions"],
        "hits": arm["hits"],
        "hit_rate": arm.hit_rate,
        "ci95": [low, high],
        "hit_rate_by_position": {
            p: _share(arm[f"hits@{p}"], arm["impressions"]) for p in POSITIONS
        },
        "catalog_coverage": _share(arm.distinct_items, catalog_size),
        "long_tail_share": _share(arm["long_tail"], arm["items"]),
        "new_item_share": _share(arm["new_items"], arm["items"]),
        "explored_items": arm["explored"],
        "explore_hits": arm["explore_hits"],
        "degraded_share": _share(arm["degraded"], arm["lists"]),
    }


def render(
    experiment: str, arms: Sequence[ArmCounts], catalog_size: int, alpha: float = 0.05
) -> str:
    """The comparison as text: one line per arm, then one per test."""
    lines = [f"experiment {experiment}"]
    header = (
        f"{'arm':<16}{'impressions':>12}{'hits':>8}{'hit rate':>10}{'95% CI':>18}"
        f"{'coverage':>10}{'long tail':>10}{'new':>8}{'degraded':>10}"
    )
    lines.append(header)
    for arm in arms:
        if arm.shadow:
            continue
        s = arm_summary(arm, catalog_size)
        low, high = s["ci95"]
        lines.append(
            f"{arm.arm:<16}{arm['impressions']:>12.0f}{arm['hits']:>8.0f}{arm.hit_rate:>10.4f}"
            f"{f'[{low:.4f}, {high:.4f}]':>18}{s['catalog_coverage']:>10.3f}"
            f"{s['long_tail_share']:>10.3f}{s['new_item_share']:>8.3f}{s['degraded_share']:>10.3f}"
        )
    for arm in (a for a in arms if a.shadow):
        s = arm_summary(arm, catalog_size)
        lines.append(
            f"{arm.arm:<16}shadow: {s['shadow_lists']:.0f} lists ranked, overlap@k with the"
            f" published list {s['overlap_at_k']:.3f}"
        )
    comparisons = compare(arms, alpha)
    if comparisons:
        lines.append(
            f"two-proportion z-test on hits per impression, two-sided, alpha {alpha}"
            f" (Bonferroni over {len(comparisons)} comparison(s)):"
        )
    for c in comparisons:
        verdict = "conclusive" if c.conclusive else "not conclusive"
        lines.append(
            f"  {c.arm} vs {c.control}: {c.difference:+.4f} ({c.relative:+.1%}),"
            f" z {c.z:.2f}, p {c.p_value:.4f}: {verdict}"
        )
    return "\n".join(lines)
