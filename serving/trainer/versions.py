"""The ``recommender`` model's versions in the Triton model repository.

Triton serves the highest numbered version directory (its default policy, ``latest 1``),
so the live version is always the highest: a restart serves what was live before it. Every
change adds a version and nothing is rewritten in place:

- a trained candidate is written whole into a staging directory beside the versions (a
  name Triton does not read as a version: it starts with a dot; Triton reads "3.tmp" as
  3), then renamed to the next number in one step; a trainer killed before the rename
  leaves only a staging directory, which the next one deletes;
- ``promote N`` copies version N to the next number the same way; ``rollback`` promotes
  the newest version from before the live one's original that is another model;
- a version is deleted by first renaming it to a dotted name, so no half-deleted
  directory ever holds a number.

Writers hold an exclusive lock on ``.lock`` in the model directory (a trainer from
staging to publishing, an operator's promote), so one never deletes another's staging.

A version's ``head.json`` (written last) holds the tag every message's ``model_version``
carries and its provenance: what it learned from, the gate's scores, what it was promoted
from. Version 1, the zero-shot model, has none: its tag is in ``config.pbtxt``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stream_app.core.settings import TritonSettings

STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
ZERO_SHOT_TAG = re.compile(r'key:\s*"zero_shot_version",\s*value:\s*\{\s*string_value:\s*"([^"]+)"')


@dataclass(frozen=True)
class Version:
    number: int
    path: Path
    model_version: str
    """The tag of every message this version answers."""
    provenance: dict

    @property
    def is_head(self) -> bool:
        return (self.path / "head.json").exists()

    @property
    def encoder_version(self) -> int:
        """The item_embedder version whose vectors it ranks with (the zero-shot model: 1)."""
        if not self.is_head:
            return 1
        return int(json.loads((self.path / "head.json").read_text()).get("encoder_version", 1))

    @property
    def trained_until_ts(self) -> float | None:
        """The newest event the version learned from (None: the zero-shot model)."""
        return self.provenance.get("trained_until_ts")


class ModelRepository:
    def __init__(self, root: Path, model: str = "recommender") -> None:
        self.model_dir = Path(root) / model

    @classmethod
    def of(cls, triton: TritonSettings) -> ModelRepository:
        """The recommender the settings name, in the repository they name."""
        return cls(Path(triton.model_repository), triton.recommender_model)

    def versions(self) -> list[Version]:
        """Every complete version, oldest number first."""
        found = []
        for path in self.model_dir.iterdir() if self.model_dir.is_dir() else []:
            if path.name.isdigit() and path.is_dir():
                version = self._read(int(path.name), path)
                if version is not None:
                    found.append(version)
        return sorted(found, key=lambda v: v.number)

    def live(self) -> Version:
        versions = self.versions()
        if not versions:
            raise FileNotFoundError(f"{self.model_dir} holds no complete version")
        return versions[-1]

    def get(self, number: int) -> Version:
        for version in self.versions():
            if version.number == number:
                return version
        numbers = [v.number for v in self.versions()]
        raise ValueError(f"{self.model_dir.name} has no version {number} (it has {numbers})")

    def warm_starts_in_a_row(self) -> int:
        """Live versions, newest first, that were warm-started, until one that was not.
        Read from the repository, so a schedule of full retrains survives restarts and
        one-cycle runs (a CronJob's)."""
        count = 0
        for version in reversed(self.versions()):
            if version.provenance.get("mode") != "warm":
                break
            count += 1
        return count

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Held by whoever stages, publishes or deletes versions (released if it dies)."""
        with open(self.model_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def staging_dir(self) -> Path:
        """A fresh path for a candidate; leftovers of killed writers go first. Hold
        :meth:`lock` from here until :meth:`publish`."""
        for leftover in [
            *self.model_dir.glob(f"{STAGING_PREFIX}*"),
            *self.model_dir.glob(f"{DELETING_PREFIX}*"),
        ]:
            shutil.rmtree(leftover, ignore_errors=True)
        return self.model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"

    def publish(self, staged: Path, provenance: dict | None = None) -> Version:
        """Make a complete staged directory the next (live) version, in one rename. The
        number is above every numbered directory, complete or not: Triton would serve any."""
        if provenance:
            add_provenance(staged, provenance)
        numbers = [int(p.name) for p in self.model_dir.iterdir() if p.name.isdigit()]
        target = self.model_dir / str(max(numbers, default=0) + 1)
        os.rename(staged, target)
        sync_dir(self.model_dir)
        return self.get(int(target.name))

    def promote(self, number: int, reason: str = "promoted") -> Version:
        """Serve version ``number`` again, as a new version (a copy of it)."""
        source = self.get(number)
        if not source.is_head:
            raise ValueError(
                f"version {number} is the zero-shot model: serve it by removing the trained"
                " versions above it, not by copying it (its files are shared with git)"
            )
        with self.lock():
            staged = self.staging_dir()
            shutil.copytree(source.path, staged)
            return self.publish(staged, {"promoted_from": _origin(source), "promotion": reason})

    def rollback(self) -> Version:
        """Serve the model before the live one: the newest version numbered below the
        live one's original that holds another model (so a second rollback goes further
        back instead of bringing back what the first one rolled back from)."""
        versions = self.versions()
        live = versions[-1]
        origin = _origin(live)
        earlier = [
            v
            for v in versions
            if v.number < origin and v.is_head and v.model_version != live.model_version
        ]
        if not earlier:
            raise ValueError(f"nothing to roll back to: no trained version before {origin}")
        return self.promote(earlier[-1].number, reason="rollback")

    def remove(self, version: Version) -> None:
        """Delete a version: renamed out of the numbers first, so Triton never finds half."""
        doomed = self.model_dir / f"{DELETING_PREFIX}{version.number}-{uuid.uuid4().hex[:6]}"
        os.rename(version.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def prune(self, keep: int, pinned: Collection[int] = ()) -> list[int]:
        """Delete trained versions beyond the newest ``keep`` (never version 1, the live
        one or a ``pinned`` one: an experiment arm serves it); returns the numbers deleted."""
        with self.lock():
            trained = [v for v in self.versions() if v.number != 1 and v.number not in pinned]
            doomed = trained[:-keep] if len(trained) > keep else []
            for version in doomed:
                self.remove(version)
        return [v.number for v in doomed]

    def _read(self, number: int, path: Path) -> Version | None:
        metadata_file = path / "head.json"
        if metadata_file.exists():
            metadata = json.loads(metadata_file.read_text())
            return Version(number, path, metadata["model_version"], metadata.get("provenance", {}))
        if (path / "model.py").exists() and number == 1:
            match = ZERO_SHOT_TAG.search((self.model_dir / "config.pbtxt").read_text())
            return Version(number, path, match.group(1) if match else "zero-shot", {})
        return None  # not a version this module wrote: an incomplete copy, say


def add_provenance(version_dir: Path, provenance: dict) -> None:
    """Merge ``provenance`` into a staged version's head.json."""
    metadata_file = version_dir / "head.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["provenance"] = metadata.get("provenance", {}) | provenance
    _write_atomically(metadata_file, json.dumps(metadata, indent=1))


def _origin(version: Version) -> int:
    """The version a copy was made from (a copy of a copy: the first one)."""
    return int(version.provenance.get("promoted_from", version.number))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sync_dir(path: Path) -> None:
    """The rename survives a power cut once the directory itself is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_model(repository: Path, name: str, like: str = "recommender") -> Path:
    """A model of its own in the repository: ``like``'s config under ``name``, and its
    version 1 (the zero-shot model, shared with git) linked; returns its directory. For
    benchmarks and tests that add versions without touching the served model's."""
    model_dir = repository / name
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text(renamed_config(repository / like, name))
    (model_dir / "1").symlink_to((repository / like / "1").resolve())
    return model_dir


def renamed_config(model_dir: Path, name: str) -> str:
    """A model's config.pbtxt for a copy of the model called ``name``."""
    config = (model_dir / "config.pbtxt").read_text()
    return config.replace(f'name: "{model_dir.name}"', f'name: "{name}"')
