"""MovieLens-100k, read straight from the recbole wheel (see DESIGN.md: offline data).

``make data`` downloads the wheel with ``pip download --no-deps``; recbole itself is never
installed and the data is never committed. Item text is "title (year) genres".
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path("data")
WHEEL_GLOB = "recbole-*.whl"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"


@dataclass(frozen=True)
class Movie:
    item_id: str
    title: str
    year: str
    genres: tuple[str, ...]

    @property
    def text(self) -> str:
        year = f" ({self.year})" if self.year else ""
        return f"{self.title}{year} {' '.join(self.genres)}".strip()


@dataclass(frozen=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    timestamp: int


@dataclass(frozen=True)
class MovieLens:
    movies: tuple[Movie, ...]
    ratings: tuple[Rating, ...]  # by timestamp; same-second ratings in the file's order


def item_texts(movielens: MovieLens, item_ids: Sequence[str]) -> list[str]:
    """The text of each of ``item_ids``, in that order (what the encoder reads)."""
    by_id = {m.item_id: m for m in movielens.movies}
    return [by_id[i].text for i in item_ids]


def find_wheel(data_dir: Path = DATA_DIR) -> Path:
    wheels = sorted(data_dir.glob(WHEEL_GLOB))
    if not wheels:
        raise FileNotFoundError(
            f"no {WHEEL_GLOB} in {data_dir}/: run `make data` "
            "(pip download --no-deps recbole==1.2.1 -d data)"
        )
    return wheels[-1]


def load_movielens(wheel: Path | None = None) -> MovieLens:
    with zipfile.ZipFile(wheel or find_wheel()) as archive:
        movies = tuple(_movie(row) for row in _rows(archive, "item"))
        # A stable sort: ratings of the same second keep the order the file lists them in,
        # as a stream keeps the order events arrived in (and as RecBole orders them).
        ratings = sorted((_rating(row) for row in _rows(archive, "inter")), key=_time)
    return MovieLens(movies, tuple(ratings))


def _time(rating: Rating) -> int:
    return rating.timestamp


def _rows(archive: zipfile.ZipFile, kind: str):
    text = io.TextIOWrapper(archive.open(MEMBER.format(kind)), encoding="utf-8")
    reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE)
    next(reader)  # header: "item_id:token  movie_title:token_seq ..."
    yield from reader


def _movie(row: list[str]) -> Movie:
    item_id, title, year, genres = (row + ["", "", ""])[:4]
    return Movie(item_id, title.strip(), year.strip(), tuple(genres.split()))


def _rating(row: list[str]) -> Rating:
    user_id, item_id, rating, timestamp = row[:4]
    return Rating(user_id, item_id, float(rating), int(float(timestamp)))


@dataclass(frozen=True)
class Sequences:
    """Per-user item sequences as catalog rows (1..n_items; 0 is padding), oldest first.

    ``purchased`` marks ratings of 4 or more, the events the replay also sends as purchases.
    """

    item_ids: tuple[str, ...]  # row r holds item_ids[r - 1]
    users: tuple[str, ...]
    items: tuple[tuple[int, ...], ...]
    purchased: tuple[tuple[bool, ...], ...]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Split:
    """Leave-one-out: per user, the last item is test, the one before validation."""

    train: Sequences  # each user's items before the validation item
    valid_targets: tuple[int, ...]
    test_targets: tuple[int, ...]
    full: Sequences  # the whole sequences (train + valid + test), for masking and inputs


def user_sequences(movielens: MovieLens) -> Sequences:
    """Every rating as implicit feedback, per user in time order (same-second ratings in
    the file's order)."""
    item_ids = tuple(sorted((m.item_id for m in movielens.movies), key=int))
    row_of = {item_id: row for row, item_id in enumerate(item_ids, start=1)}
    per_user: dict[str, list[Rating]] = {}
    for rating in movielens.ratings:  # already in time order
        per_user.setdefault(rating.user_id, []).append(rating)
    users = tuple(sorted(per_user, key=int))
    return Sequences(
        item_ids=item_ids,
        users=users,
        items=tuple(tuple(row_of[r.item_id] for r in per_user[u]) for u in users),
        purchased=tuple(tuple(r.rating >= 4 for r in per_user[u]) for u in users),
    )


def leave_one_out(sequences: Sequences) -> Split:
    """Deterministic split; users with fewer than 3 items are left out (none in ML-100k)."""
    keep = [i for i, items in enumerate(sequences.items) if len(items) >= 3]
    train = Sequences(
        sequences.item_ids,
        tuple(sequences.users[i] for i in keep),
        tuple(sequences.items[i][:-2] for i in keep),
        tuple(sequences.purchased[i][:-2] for i in keep),
    )
    full = Sequences(
        sequences.item_ids,
        train.users,
        tuple(sequences.items[i] for i in keep),
        tuple(sequences.purchased[i] for i in keep),
    )
    return Split(
        train=train,
        valid_targets=tuple(sequences.items[i][-2] for i in keep),
        test_targets=tuple(sequences.items[i][-1] for i in keep),
        full=full,
    )


def without_items(sequences: Sequences, rows: frozenset[int]) -> Sequences:
    """The same users with the given items removed from every sequence (cold-start)."""
    pairs = [
        [(i, p) for i, p in zip(items, bought) if i not in rows]
        for items, bought in zip(sequences.items, sequences.purchased)
    ]
    return Sequences(
        sequences.item_ids,
        sequences.users,
        tuple(tuple(i for i, _ in p) for p in pairs),
        tuple(tuple(b for _, b in p) for p in pairs),
    )
