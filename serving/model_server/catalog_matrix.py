"""The catalog as matrices in memory, changed item by item as the catalog log arrives.

Rows never move once given out, so a catalog of a million items takes an upsert without
a copy of the whole matrix: new items are appended (capacity doubles when full), an
upserted item is rewritten in place, and a removed item keeps its row but is masked out
(``active``), so it is never recommended yet still informs the histories that hold it.
A full snapshot (``replace``) starts over and drops the masked rows.

``text`` holds the BERT vectors (diversity, explanations, the zero-shot model);
``scoring`` holds what the serving model scores with: the same vectors, or the trained
head's item tower applied to them (``transform``).

Given an ``AnnConfig``, the matrix also keeps an approximate index over ``scoring``
(``ann_index``) once more than ``min_items`` rows are active, and changes it with
every upsert and remove; ``ann_index`` says when the ranker should search it. Building
the index takes seconds at a million rows; with ``background_index`` (the Triton model)
it is built in a thread while the exact search goes on serving, and the rows changed in
the meantime are redone before the index is swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from serving.model_server.ann_index import AnnConfig, AnnIndex

logger = logging.getLogger(__name__)

Transform = Callable[[list[str], np.ndarray], np.ndarray]
"""(item ids, text vectors) -> scoring vectors, one row per item."""


class CatalogMatrix:
    def __init__(
        self,
        transform: Transform | None = None,
        ann: AnnConfig | None = None,
        background_index: bool = False,
    ) -> None:
        self._transform = transform
        self._ann = ann
        self._background = background_index
        # Held by every change, and by a background build while it swaps its index in.
        self._lock = threading.RLock()
        self._build: _IndexBuild | None = None
        self.replace([], np.empty((0, 0), dtype=np.float32))

    @property
    def item_ids(self) -> np.ndarray:
        return self._ids[: self.size]

    @property
    def text(self) -> np.ndarray:
        return self._text[: self.size]

    @property
    def scoring(self) -> np.ndarray:
        return self._scoring[: self.size]

    @property
    def active(self) -> np.ndarray:
        return self._active[: self.size]

    @property
    def added(self) -> np.ndarray:
        """When each row's item entered the catalog (epoch seconds; 0: imported or unknown)."""
        return self._added[: self.size]

    def young_rows(self, since: float) -> np.ndarray:
        """Active rows whose item entered the catalog after ``since`` (exploration)."""
        return np.flatnonzero(self.active & (self.added > since))

    @property
    def active_count(self) -> int:
        return int(self.active.sum())

    def ann_index(self) -> AnnIndex | None:
        """The approximate index, while the catalog is large enough to need it."""
        if self._index is not None and self.active_count > self._ann_config().min_items:
            return self._index
        return None

    def wait_for_index(self, timeout_s: float | None = None) -> bool:
        """Wait for a background index build to end; False if it is still running."""
        build = self._build
        return build is None or build.done.wait(timeout_s)

    def replace(
        self, item_ids: list[str], vectors: np.ndarray, added: np.ndarray | None = None
    ) -> None:
        """Start over from a snapshot."""
        with self._lock:
            self.size = 0
            self._index: AnnIndex | None = None  # rebuilt (retrained) from the snapshot
            self._build = None  # a build still running for the old catalog is dropped
            self.row_of: dict[str, int] = {}
            self._ids = np.empty(0, dtype=object)
            self._text = np.empty((0, vectors.shape[1] if vectors.size else 0), dtype=np.float32)
            self._scoring = self._text
            self._active = np.empty(0, dtype=bool)
            self._added = np.empty(0, dtype=np.float64)
            if item_ids:
                self.upsert(item_ids, vectors, added)

    def upsert(
        self, item_ids: list[str], vectors: np.ndarray, added: np.ndarray | None = None
    ) -> None:
        """Add new items and overwrite known ones (which become active again); ``added``:
        when each entered the catalog (default 0: not new)."""
        with self._lock:
            self._upsert(item_ids, vectors, added)

    def _upsert(self, item_ids: list[str], vectors: np.ndarray, added: np.ndarray | None) -> None:
        if len(item_ids) != len(vectors):
            raise ValueError(f"{len(item_ids)} ids but {len(vectors)} vectors")
        if not item_ids:
            return
        latest = {item_id: row for row, item_id in enumerate(item_ids)}  # last one wins
        picked = list(latest.values())
        item_ids = list(latest)
        vectors = np.asarray(vectors, dtype=np.float32)[picked]
        added = np.zeros(len(item_ids)) if added is None else np.asarray(added, np.float64)[picked]
        # Everything that can fail comes before the first change to this matrix.
        scoring = self._transform(item_ids, vectors) if self._transform else vectors
        new_rows: dict[str, int] = {}
        for item_id in item_ids:
            if item_id not in self.row_of:
                new_rows[item_id] = self.size + len(new_rows)
        needed = self.size + len(new_rows)
        self._reserve(needed, vectors.shape[1], scoring.shape[1])
        self.row_of.update(new_rows)
        index = np.array([self.row_of[i] for i in item_ids])
        self._ids[index] = item_ids
        self._text[index] = vectors
        if self._transform:
            self._scoring[index] = scoring
        self._active[index] = True
        self._added[index] = added
        self.size = needed
        if self._index is not None:
            self._index.upsert(index, scoring)
        elif self._build is not None:
            self._build.changed.update(index.tolist())
        elif self._ann is not None and self.active_count > self._ann.min_items:
            self._start_build()

    def remove(self, item_ids: list[str]) -> None:
        """Mask items out; unknown ids are ignored (removing twice is harmless)."""
        with self._lock:
            rows = [self.row_of[i] for i in item_ids if i in self.row_of]
            self._active[rows] = False
            if self._index is not None and rows:
                self._index.remove(np.array(rows))
            elif self._build is not None:
                self._build.changed.update(rows)

    def _ann_config(self) -> AnnConfig:
        if self._ann is None:
            raise AssertionError("an index exists only where an AnnConfig was given")
        return self._ann

    def _start_build(self) -> None:
        ann = self._ann_config()
        build = self._build = _IndexBuild()
        rows = np.flatnonzero(self.active)
        # A view, not a copy of the whole matrix: rows written while a background build
        # reads it are in build.changed and redone before the index is swapped in.
        scoring = self.scoring
        if not self._background:
            self._finish(build, AnnIndex(rows, _select(scoring, rows), ann))
            return

        def run() -> None:
            started = time.monotonic()
            try:
                index = AnnIndex(rows, _select(scoring, rows), ann)
            except Exception:  # noqa: BLE001  (the exact search goes on; a later upsert retries)
                logger.exception("approximate index build failed rows=%d", len(rows))
                with self._lock:
                    if self._build is build:
                        self._build = None
                build.done.set()
                return
            with self._lock:
                used = self._finish(build, index)
            seconds = time.monotonic() - started
            outcome = "built" if used else "dropped (the catalog was replaced meanwhile)"
            logger.info("approximate index %s rows=%d seconds=%.1f", outcome, len(rows), seconds)

        threading.Thread(target=run, name="ann-index-build", daemon=True).start()

    def _finish(self, build: _IndexBuild, index: AnnIndex) -> bool:
        """Swap a built index in, after redoing the rows changed since it started; False
        if the catalog was replaced meanwhile (the index is then dropped)."""
        used = self._build is build
        if used:
            changed = np.array(sorted(build.changed), dtype=np.int64)
            if len(changed):
                index.remove(changed)
                live = changed[self._active[changed]]
                index.upsert(live, self._scoring[live])
            self._index, self._build = index, None
        build.done.set()
        return used

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each id (bytes or str); -1 for unknown ids and empty padding."""
        lookup = self.row_of.get
        # tolist() and an inline test, not a helper call per id: a batch holds ~10^4 ids.
        flat = [lookup(i if type(i) is str else _as_str(i), -1) for i in item_ids.ravel().tolist()]
        return np.array(flat, dtype=np.int64).reshape(item_ids.shape)

    def _reserve(self, rows: int, text_dim: int, scoring_dim: int) -> None:
        if self.size and text_dim != self._text.shape[1]:
            raise ValueError(
                f"vectors have {text_dim} dimensions, the catalog {self._text.shape[1]}"
            )
        capacity = len(self._ids)
        if rows <= capacity and self._text.shape[1] == text_dim:
            return
        grown = max(rows, 2 * capacity, 1024)
        self._ids = _grow(self._ids, grown)
        self._active = _grow(self._active, grown)
        self._added = _grow(self._added, grown)
        self._text = _grow(self._text, grown, text_dim)
        self._scoring = _grow(self._scoring, grown, scoring_dim) if self._transform else self._text


class _IndexBuild:
    """An index build in progress: rows changed since it started, and when it ends."""

    def __init__(self) -> None:
        self.changed: set[int] = set()
        self.done = threading.Event()


def _select(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    # Every row active (the usual snapshot): no copy of the whole matrix.
    return vectors if len(rows) == len(vectors) else vectors[rows]


def _grow(array: np.ndarray, rows: int, width: int | None = None) -> np.ndarray:
    shape = (rows,) if width is None else (rows, width)
    grown = np.zeros(shape, dtype=array.dtype)
    if array.size:
        grown[: len(array)] = array
    return grown


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
