"""Which experiment arm a user is in: pure, so every worker agrees without talking.

A user's arm is a function of the experiment's salt and the user's pseudonym only, never
of the partition or the worker, so it is sticky across restarts and rebalances. The hash
is weighted rendezvous hashing: each arm draws a keyed score for the user, scaled by its
weight, and the best score wins. An arm's share of users is its share of the weights,
and changing one arm's weight moves users only into or out of that arm (adding an arm
takes users only into the new one); the other arms keep every user they had.

Shadow arms take no users: they score a sample of every arm's users, and what they
rank is compared with what was published, never shown.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass

from stream_app.core.settings import ExperimentSettings

LIVE_VERSION = "live"
"""An arm's model version that means "whatever Triton serves as newest"."""
CANDIDATE_VERSION = "candidate"
"""An arm's model version that means "the trainer's candidate on trial, else live"."""
DEFAULT_ARM = "default"

_UNIT = float(1 << 53)


@dataclass(frozen=True)
class Arm:
    name: str
    model_version: str = LIVE_VERSION  # "live", "candidate" or a version number
    weight: float = 1.0  # share of users, relative to the other published arms
    shadow: bool = False  # scored for comparison, never published
    sample: float = 1.0  # shadow arms: share of users scored
    diversity: float | None = None  # overrides policy.diversity
    explore_share: float | None = None  # overrides exploration.share

    @property
    def triton_version(self) -> str:
        """The version to ask Triton for: "" lets Triton answer with its newest."""
        return self.model_version if self.model_version.isdigit() else ""

    @property
    def is_candidate(self) -> bool:
        return self.model_version == CANDIDATE_VERSION


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    salt: str

    @classmethod
    def of(cls, settings: ExperimentSettings) -> Experiment:
        """The configured experiment; with no arms, everyone is in one live arm."""
        if not settings.arms:
            return cls(settings.name, (Arm(DEFAULT_ARM),), settings.salt or settings.name)
        arms = tuple(Arm(**a.model_dump()) for a in settings.arms)
        return cls(settings.name, arms, settings.salt or settings.name)

    @property
    def published(self) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if not a.shadow)

    @property
    def shadows(self) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if a.shadow)

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    def assign(self, pseudonym: str) -> Arm:
        """The published arm this user sees."""
        if len(self.arms) == 1:
            return self.arms[0]  # no experiment: no hash to compute
        return max(
            (a for a in self.published if a.weight > 0),
            key=lambda a: _rendezvous_score(self.salt, a.name, pseudonym, a.weight),
        )

    def shadowed_by(self, pseudonym: str) -> list[Arm]:
        """The shadow arms that also score this user."""
        return [a for a in self.shadows if _uniform(self.salt, a.name, pseudonym) < a.sample]

    def pinned_versions(self) -> list[int]:
        """The recommender versions the arms name (Triton must keep them loaded)."""
        return sorted({int(a.model_version) for a in self.arms if a.model_version.isdigit()})

    @property
    def candidate(self) -> Arm | None:
        """The published arm a trainer candidate on trial serves."""
        return next((a for a in self.published if a.is_candidate and a.weight > 0), None)

    @property
    def control(self) -> Arm | None:
        """The first published live arm: what a candidate on trial is compared with."""
        return next(
            (a for a in self.published if a.model_version == LIVE_VERSION and a.weight > 0), None
        )


def _uniform(salt: str, arm: str, pseudonym: str) -> float:
    """A keyed hash of (arm, user) as a number in (0, 1)."""
    digest = hmac.new(salt.encode(), f"{arm}\0{pseudonym}".encode(), hashlib.sha256).digest()
    return (int.from_bytes(digest[:7], "big") >> 3 | 1) / _UNIT


def _rendezvous_score(salt: str, arm: str, pseudonym: str, weight: float) -> float:
    # -w / ln(u) is largest for arm i with probability w_i / sum(w): the weighted
    # rendezvous ("highest random weight") hash.
    return -weight / math.log(_uniform(salt, arm, pseudonym))


def group_by_arm(experiment: Experiment, pseudonyms: Sequence[str]) -> dict[str, list[int]]:
    """Positions of the users of each published arm, in the arms' configured order."""
    groups: dict[str, list[int]] = {a.name: [] for a in experiment.published}
    for position, pseudonym in enumerate(pseudonyms):
        groups[experiment.assign(pseudonym).name].append(position)
    return {name: positions for name, positions in groups.items() if positions}


def group_by_shadow(experiment: Experiment, pseudonyms: Sequence[str]) -> dict[str, list[int]]:
    """Positions of the users each shadow arm scores (a user may be in several)."""
    groups: dict[str, list[int]] = {a.name: [] for a in experiment.shadows}
    for position, pseudonym in enumerate(pseudonyms):
        for arm in experiment.shadowed_by(pseudonym):
            groups[arm.name].append(position)
    return {name: positions for name, positions in groups.items() if positions}
