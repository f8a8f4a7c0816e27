"""The operator's side of experiments: serve the arms' versions, read the arms' counts."""

from __future__ import annotations

import redis

from serving.trainer.triton_control import load_served
from serving.trainer.versions import ModelRepository
from stream_app.core.experiment_report import COUNTERS, ArmCounts
from stream_app.core.experiments import Experiment
from stream_app.core.keys import CatalogKeys, ExperimentKeys
from stream_app.core.settings import Settings


def apply_experiment(settings: Settings) -> tuple[list[int], float]:
    """Have Triton serve the live version and every version an arm names; returns the
    versions served and the seconds the load took."""
    experiment = Experiment.of(settings.experiment)
    repository = ModelRepository.of(settings.triton)
    numbers = {v.number for v in repository.versions()}
    missing = [n for n in experiment.pinned_versions() if n not in numbers]
    if missing:
        raise ValueError(
            f"the model repository has no version {missing} (it has {sorted(numbers)})"
        )
    live = repository.live().number
    seconds = load_served(settings, live)
    return sorted({live, *experiment.pinned_versions()}), seconds


def read_arms(client: redis.Redis, settings: Settings) -> tuple[list[ArmCounts], int]:
    """Every configured arm's counts so far, and the catalog's size."""
    experiment = Experiment.of(settings.experiment)
    keys = ExperimentKeys(settings.redis.key_prefix, experiment.name)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.counts)
    for arm in experiment.arms:
        pipe.execute_command("PFCOUNT", keys.items(arm.name))  # cluster pipelines refuse pfcount()
    pipe.hlen(CatalogKeys(settings.redis.key_prefix).meta)
    counts, *distinct, catalog_size = pipe.execute()
    by_arm: dict[str, dict[str, float]] = {a.name: {} for a in experiment.arms}
    for field, value in counts.items():
        arm, _, counter = field.decode().partition("|")
        if arm in by_arm and counter in COUNTERS:
            by_arm[arm][counter] = float(value)
    arms = [
        ArmCounts(arm.name, by_arm[arm.name], int(items), arm.shadow)
        for arm, items in zip(experiment.arms, distinct)
    ]
    return arms, int(catalog_size)
