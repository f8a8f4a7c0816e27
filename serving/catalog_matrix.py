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
(``serving.ann_index``) once more than ``min_items`` rows are active, and changes it with
every upsert and remove; ``ann_index`` says when the ranker should search it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from serving.ann_index import AnnConfig, AnnIndex

Transform = Callable[[list[str], np.ndarray], np.ndarray]
"""(item ids, text vectors) -> scoring vectors, one row per item."""


class CatalogMatrix:
    def __init__(self, transform: Transform | None = None, ann: AnnConfig | None = None) -> None:
        self._transform = transform
        self._ann = ann
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
    def active_count(self) -> int:
        return int(self.active.sum())

    def ann_index(self) -> AnnIndex | None:
        """The approximate index, while the catalog is large enough to need it."""
        if self._index is not None and self.active_count > self._ann.min_items:
            return self._index
        return None

    def replace(self, item_ids: list[str], vectors: np.ndarray) -> None:
        """Start over from a snapshot."""
        self.size = 0
        self._index: AnnIndex | None = None  # rebuilt (retrained) from the snapshot
        self.row_of: dict[str, int] = {}
        self._ids = np.empty(0, dtype=object)
        self._text = np.empty((0, vectors.shape[1] if vectors.size else 0), dtype=np.float32)
        self._scoring = self._text
        self._active = np.empty(0, dtype=bool)
        if item_ids:
            self.upsert(item_ids, vectors)

    def upsert(self, item_ids: list[str], vectors: np.ndarray) -> None:
        """Add new items and overwrite known ones (which become active again)."""
        if len(item_ids) != len(vectors):
            raise ValueError(f"{len(item_ids)} ids but {len(vectors)} vectors")
        if not item_ids:
            return
        latest = {item_id: row for row, item_id in enumerate(item_ids)}  # last one wins
        item_ids = list(latest)
        vectors = np.asarray(vectors, dtype=np.float32)[list(latest.values())]
        # Everything that can fail comes before the first change to this matrix.
        scoring = self._transform(item_ids, vectors) if self._transform else vectors
        new_rows = {}
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
        self.size = needed
        if self._index is not None:
            self._index.upsert(index, scoring)
        elif self._ann is not None and self.active_count > self._ann.min_items:
            self._build_index()

    def remove(self, item_ids: list[str]) -> None:
        """Mask items out; unknown ids are ignored (removing twice is harmless)."""
        rows = [self.row_of[i] for i in item_ids if i in self.row_of]
        self._active[rows] = False
        if self._index is not None and rows:
            self._index.remove(np.array(rows))

    def _build_index(self) -> None:
        rows = np.flatnonzero(self.active)
        # Every row active (the usual snapshot): no copy of the whole matrix.
        vectors = self.scoring if len(rows) == self.size else self.scoring[rows]
        self._index = AnnIndex(rows, vectors, self._ann)

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
        self._text = _grow(self._text, grown, text_dim)
        self._scoring = _grow(self._scoring, grown, scoring_dim) if self._transform else self._text


def _grow(array: np.ndarray, rows: int, width: int | None = None) -> np.ndarray:
    shape = (rows,) if width is None else (rows, width)
    grown = np.zeros(shape, dtype=array.dtype)
    if array.size:
        grown[: len(array)] = array
    return grown


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
