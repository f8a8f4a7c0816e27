"""The ``recommender`` model's versions in the Triton model repository.

Triton serves the highest complete version number (its default policy, ``latest 1``), so
the live version is always the highest: a restart serves what was live before it. Every
change adds a version and nothing is renamed in place:

- a trained candidate is written whole into a staging directory beside the versions
  (a name Triton does not read as a version: it starts with a dot), then renamed to the
  next number in one step; a trainer killed before the rename leaves only a staging
  directory, which the next trainer deletes;
- ``promote N`` copies version N to the next number the same way, and ``rollback``
  promotes the version that was live before the current one.

A version's ``head.json`` (written last) holds the tag every message's ``model_version``
carries and its provenance: what it learned from, the gate's scores, what it was promoted
from. Version 1, the zero-shot model, has none: its tag is in ``config.pbtxt``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

STAGING_PREFIX = ".staging-"
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
    def trained_until_ts(self) -> float | None:
        """The newest event the version learned from (None: the zero-shot model)."""
        return self.provenance.get("trained_until_ts")


class ModelRepository:
    def __init__(self, root: Path, model: str = "recommender") -> None:
        self.model_dir = Path(root) / model

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

    def staging_dir(self) -> Path:
        """A fresh path for a candidate; leftovers of earlier, killed trainers go first."""
        self.clean_staging()
        return self.model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"

    def clean_staging(self) -> None:
        for path in self.model_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, staged: Path, provenance: dict | None = None) -> Version:
        """Make a complete staged directory the next (live) version, in one rename."""
        if provenance:
            metadata_file = staged / "head.json"
            metadata = json.loads(metadata_file.read_text())
            metadata["provenance"] = metadata.get("provenance", {}) | provenance
            _write_atomically(metadata_file, json.dumps(metadata, indent=1))
        number = max((v.number for v in self.versions()), default=0) + 1
        target = self.model_dir / str(number)
        os.rename(staged, target)  # fails, rather than merging, if the number exists
        _sync_dir(self.model_dir)
        return self.get(number)

    def promote(self, number: int, reason: str = "promoted") -> Version:
        """Serve version ``number`` again, as a new version (a copy of it)."""
        source = self.get(number)
        if not source.is_head:
            raise ValueError(
                f"version {number} is the zero-shot model: serve it by removing the trained"
                " versions above it, not by copying it (its files are shared with git)"
            )
        staged = self.staging_dir()
        shutil.copytree(source.path, staged)
        return self.publish(staged, {"promoted_from": number, "promotion": reason})

    def rollback(self) -> Version:
        """Serve the version that was live before the current one."""
        versions = self.versions()
        if len(versions) < 2:
            raise ValueError("nothing to roll back to: only one version")
        return self.promote(versions[-2].number, reason="rollback")

    def prune(self, keep: int) -> list[int]:
        """Delete trained versions beyond the newest ``keep`` (never version 1 or the live
        one); returns the numbers deleted."""
        trained = [v for v in self.versions() if v.number != 1]
        doomed = trained[:-keep] if len(trained) > keep else []
        for version in doomed:
            shutil.rmtree(version.path)
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


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sync_dir(path: Path) -> None:
    """The rename survives a power cut once the directory itself is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
