"""The online gate: a candidate that passed the offline gate is tried on live traffic
before it goes live (``trainer.online_gate_impressions`` > 0).

- **On trial**, the candidate is a Triton model of its own, ``<recommender>_candidate``,
  beside the recommender. Workers send the users of the experiment's ``candidate`` arm to
  it while it is served, and to the live version when none is.
- **The verdict** of a later cycle compares the hits per impression of the candidate arm
  and the control arm (the first live arm) gathered since the trial began. The counts at
  its start are kept in the candidate's head.json, so the judgement survives restarts of
  the trainer.
  - Once both arms have ``online_gate_impressions``, the candidate is promoted, unless its
    rate is significantly below the control's (two-sided two-proportion test at
    ``online_gate_alpha``, decided once, at that size); then it is discarded.
  - A trial still short of impressions after ``online_gate_max_s`` is discarded.
  - Until a verdict, the trainer trains nothing new.
- **Files**: Triton loads every model in the repository at start (``--load-model=*``) and
  refuses a model without a version. So the candidate's model directory is built whole
  in the recommender's staging area and renamed into the repository in one step, and it
  leaves the same way.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from serving.trainer.experiments import read_arms
from serving.trainer.triton_control import load_latest, unload
from serving.trainer.versions import (
    DELETING_PREFIX,
    STAGING_PREFIX,
    ModelRepository,
    Version,
    add_provenance,
    renamed_config,
    sync_dir,
)
from stream_app.core.experiment_report import two_proportion_test
from stream_app.core.experiments import Experiment
from stream_app.core.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tally:
    impressions: float = 0.0
    hits: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.impressions if self.impressions else 0.0

    def since(self, start: Tally) -> Tally:
        return Tally(self.impressions - start.impressions, self.hits - start.hits)


@dataclass(frozen=True)
class OnlineVerdict:
    verdict: str  # promoted | rejected | trial (no verdict yet)
    reason: str
    candidate: Tally
    control: Tally
    z: float
    p_value: float

    def summary(self) -> dict:
        return {
            "verdict": self.verdict,
            "candidate": asdict(self.candidate) | {"hit_rate": round(self.candidate.hit_rate, 5)},
            "control": asdict(self.control) | {"hit_rate": round(self.control.hit_rate, 5)},
            "z": round(self.z, 4),
            "p_value": round(self.p_value, 5),
        }


def judge(
    candidate: Tally,
    control: Tally,
    *,
    impressions: int,
    alpha: float,
    age_s: float,
    max_s: float,
) -> OnlineVerdict:
    """The trial's verdict on the counts since it began (pure)."""
    z, p = two_proportion_test(
        control.hits, control.impressions, candidate.hits, candidate.impressions
    )
    fewest = min(candidate.impressions, control.impressions)
    rates = f"hit rate {candidate.hit_rate:.4f} against the control's {control.hit_rate:.4f}"

    def verdict(name: str, reason: str) -> OnlineVerdict:
        return OnlineVerdict(name, reason, candidate, control, z, p)

    if fewest < impressions:
        progress = f"{fewest:.0f} of {impressions} impressions in the smaller arm"
        if age_s > max_s:
            return verdict(
                "rejected", f"online: {progress} after {age_s:.0f} s (online_gate_max_s)"
            )
        return verdict("trial", f"online: {progress} so far")
    if candidate.hit_rate < control.hit_rate and p < alpha:
        return verdict("rejected", f"online: {rates}, significantly lower (p={p:.4f})")
    return verdict("promoted", f"online: {rates} (p={p:.4f}), not significantly lower")


class CandidateSlot:
    """The candidate model's directory in the repository: empty, or one version on trial."""

    def __init__(self, repository: ModelRepository, name: str) -> None:
        self.repository = repository
        self.model = ModelRepository(repository.model_dir.parent, name)

    @property
    def name(self) -> str:
        return self.model.model_dir.name

    def current(self) -> Version | None:
        versions = self.model.versions()
        return versions[-1] if versions else None

    def fill(self, staged: Path, number: int) -> Version:
        """A staged version, complete, becomes the candidate model's version ``number``.
        Hold the recommender's lock."""
        if self.model.model_dir.exists():
            raise FileExistsError(f"{self.model.model_dir} exists: a candidate is on trial")
        wrapper = staged.with_name(f"{staged.name}-model")
        wrapper.mkdir()
        (wrapper / "config.pbtxt").write_text(renamed_config(self.repository.model_dir, self.name))
        os.rename(staged, wrapper / str(number))
        os.rename(wrapper, self.model.model_dir)
        sync_dir(self.model.model_dir.parent)
        version = self.current()
        assert version is not None
        return version

    def take(self) -> tuple[Path, Path]:
        """Move the candidate model out of Triton's sight, into the recommender's staging
        area; returns (its version directory, the directory to delete once published).
        Hold the recommender's lock."""
        moved = self.repository.model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}-trial"
        os.rename(self.model.model_dir, moved)
        sync_dir(self.model.model_dir.parent)
        return next(p for p in moved.iterdir() if p.name.isdigit()), moved

    def empty(self) -> None:
        doomed = self.repository.model_dir / f"{DELETING_PREFIX}trial-{uuid.uuid4().hex[:6]}"
        os.rename(self.model.model_dir, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


class OnlineGate:
    """Puts candidates on trial and settles trials, for one trainer."""

    def __init__(self, settings: Settings, repository: ModelRepository, client: redis.Redis):
        experiment = Experiment.of(settings.experiment)
        assert experiment.candidate and experiment.control  # the settings check both
        self.settings, self.repository, self._redis = settings, repository, client
        self.slot = CandidateSlot(repository, settings.triton.candidate_model)
        self.arms = {"candidate": experiment.candidate.name, "control": experiment.control.name}

    @classmethod
    def of(
        cls, settings: Settings, repository: ModelRepository, client: redis.Redis
    ) -> OnlineGate | None:
        """The gate, when the settings ask for one."""
        if not settings.trainer.online_gate_impressions:
            return None
        return cls(settings, repository, client)

    def on_trial(self) -> Version | None:
        return self.slot.current()

    def start(self, staged: Path, provenance: dict) -> Version:
        """Put a staged candidate on trial (hold the recommender's lock) and have Triton
        serve it; the counts so far are its baseline."""
        baseline = {role: asdict(tally) for role, tally in self._tallies().items()}
        trial = {"started_at": time.time(), "arms": self.arms, "baseline": baseline}
        add_provenance(staged, provenance | {"trial": trial})
        number = max((v.number for v in self.repository.versions()), default=0) + 1
        version = self.slot.fill(staged, number)
        try:
            load_latest(self.settings.triton.url, self.slot.name, version.number)
        except Exception:
            self.slot.empty()
            raise
        return version

    def verdict(self, candidate: Version, now: float | None = None) -> OnlineVerdict:
        trial = candidate.provenance["trial"]
        tallies = self._tallies()
        since = {role: tallies[role].since(Tally(**trial["baseline"][role])) for role in tallies}
        gate = self.settings.trainer
        return judge(
            since["candidate"],
            since["control"],
            impressions=gate.online_gate_impressions,
            alpha=gate.online_gate_alpha,
            age_s=(time.time() if now is None else now) - trial["started_at"],
            max_s=gate.online_gate_max_s,
        )

    def settle(
        self,
        verdict: OnlineVerdict,
        publish: Callable[[Path, dict], Version],
    ) -> Version | None:
        """Carry out a promotion (``publish`` makes the candidate's directory the live
        version) or a rejection; either way the candidate model goes. Returns the version
        published, if any."""
        published = None
        figures = {"online_gate": verdict.summary()}
        try:
            with self.repository.lock():
                if verdict.verdict == "promoted":
                    version_dir, rest = self.slot.take()
                    try:
                        published = publish(version_dir, figures)
                    finally:
                        shutil.rmtree(rest, ignore_errors=True)
                else:
                    self.slot.empty()
        finally:  # even when the promotion failed: its files are gone
            _unload(self.settings.triton.url, self.slot.name)
        return published

    def _tallies(self) -> dict[str, Tally]:
        arms, _ = read_arms(self._redis, self.settings)
        counts = {a.arm: a for a in arms}
        return {
            role: Tally(counts[name]["impressions"], counts[name]["hits"])
            for role, name in self.arms.items()
        }


def end_trial(settings: Settings, repository: ModelRepository) -> Version | None:
    """Discard the candidate on trial, if there is one (an operator's decision); returns it."""
    slot = CandidateSlot(repository, settings.triton.candidate_model)
    with repository.lock():
        candidate = slot.current()
        if candidate is not None:
            slot.empty()
    if candidate is not None:
        _unload(settings.triton.url, slot.name)
    return candidate


def _unload(url: str, model: str) -> None:
    try:
        unload(url, model)
    except Exception as exc:  # noqa: BLE001  (workers fall back to live anyway)
        logger.warning('candidate not unloaded model="%s" error="%s"', model, exc)
