"""What keeping same-second ratings in file order changes in the MovieLens-100k split,
against the earlier order (same second: by user id, then item id).

    python -m bench.order_change    # writes bench/results/offline/order_change.json
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.offline.data import MovieLens, leave_one_out, load_movielens, user_sequences

OUT = Path("bench/results/offline/order_change.json")


def main() -> None:
    movielens = load_movielens()
    by_ids = sorted(movielens.ratings, key=lambda r: (r.timestamp, int(r.user_id), int(r.item_id)))
    now = leave_one_out(user_sequences(movielens))
    before = leave_one_out(user_sequences(MovieLens(movielens.movies, tuple(by_ids))))
    times: dict[str, list[int]] = {}
    for rating in movielens.ratings:
        times.setdefault(rating.user_id, []).append(rating.timestamp)
    figures = {
        "users": len(now.full.users),
        "test_item_in_the_same_second_as_the_one_before": sum(
            t[-1] == t[-2] for t in times.values()
        ),
        "test_targets_changed": sum(a != b for a, b in zip(now.test_targets, before.test_targets)),
        "valid_targets_changed": sum(
            a != b for a, b in zip(now.valid_targets, before.valid_targets)
        ),
    }
    OUT.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
