"""Lists of item ids as the recommender's tensors carry them: one string per row.

Triton turns a BYTES tensor into one Python object per element on both sides of the
wire, so a (users, history length) tensor of ids cost the worker and the model server
more than the ranking itself did. A row's ids go as one tab-separated string instead
(ids are validated printable, so they never hold a tab); an empty id is padding, and
a row of ``n`` fields keeps its place for a parallel tensor of ``n`` numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SEPARATOR = "\t"


def join_rows(rows: Iterable[Sequence[str]]) -> np.ndarray:
    """Each row's ids as one UTF-8 string: a (rows, 1) object array, for a BYTES tensor."""
    return np.array([[SEPARATOR.join(row).encode()] for row in rows], dtype=object)


def split_rows(column: np.ndarray) -> list[list[str]]:
    """``join_rows`` undone (bytes or str elements); an empty string is an empty row."""
    rows = []
    for value in column.ravel().tolist():
        text = value.decode() if isinstance(value, bytes) else value
        rows.append(text.split(SEPARATOR) if text else [])
    return rows


def padded(rows: Sequence[Sequence[str]], width: int | None = None) -> np.ndarray:
    """Ragged rows as one (rows, width) object array of str, padded with "" (width: the
    longest row, at least 1, unless given)."""
    if width is None:
        width = max(1, max((len(r) for r in rows), default=0))
    table = np.full((len(rows), width), "", dtype=object)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table
