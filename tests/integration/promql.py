"""PromQL helpers shared by the alert-rule and dashboard tests."""

from __future__ import annotations

import re

FUNCTIONS = {
    "sum",
    "by",
    "and",
    "or",
    "rate",
    "deriv",
    "max",
    "avg",
    "histogram_quantile",
    "le",
    "group_left",
    "group_right",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label names and values left out)."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_groups = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groups)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {w for w in words if "_" in w and w not in FUNCTIONS} | (
        {"up"} if re.search(r"\bup\b", without_ranges) else set()
    )
