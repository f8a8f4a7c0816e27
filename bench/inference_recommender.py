"""The ``recommender`` in-process: users/s vs catalog size, exact vs approximate, memory.

Histories are MovieLens users' training histories (the newest 50 events, what they
clicked excluded, as the served policy does). A catalog of ``size`` items holds the 1,682
MovieLens BERT vectors and then synthetic 384-d unit vectors:

- ``movielens``: MovieLens vectors moved by Gaussian noise (cosine ~0.7 with their
  source) and renormalised: text embeddings cluster, and so do these;
- ``random``: unit vectors with no structure at all, the worst case for a clustered index
  (used for the nprobe sweep only, with random histories).

Methods (the "core" ones go from catalog rows and history weights to the best 50 rows; the
"ranker" ones are the served ``Ranker.rank``: ids in, ids, scores and explanations out,
with MMR re-ranking at the served diversity 0.8):

- ``torch eager``: the same core in PyTorch, one (B, N) score matrix: the baseline;
- ``numpy one-shot``: the served core before this change (one score matrix, masked, then
  ``scoring.top_k``, which copies it);
- ``numpy blocked``: the served exact core now (``ranker.exact_top_n``);
- ``ann``: the approximate index (``ranker.approximate_top_n``);
- ``ranker exact`` and ``ranker ann``: the whole served path.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.inference_common import mib, peak_rss_bytes, reset_peak_rss, rss_bytes, timed
from serving.model_server.ann_index import AnnConfig
from serving.model_server.catalog_matrix import CatalogMatrix
from serving.model_server.ranker import Ranker, approximate_top_n, exact_top_n
from serving.model_server.scoring import history_weights, top_k, user_vectors

CANDIDATES = 50  # the recommender's diversity_candidates
DIVERSITY = 0.8  # the served MMR lambda (STREAMREC_POLICY__DIVERSITY)
HISTORY = 50  # STREAMREC_REDIS__HISTORY_LENGTH
NOISE = 0.05  # per dimension: a noise vector of norm ~1 next to a unit vector


def synthetic_catalog(base: np.ndarray, size: int, kind: str, seed: int = 0) -> np.ndarray:
    """``size`` unit vectors: ``base`` first, then synthetic ones (see the module doc)."""
    rng = np.random.default_rng(seed)
    extra = size - len(base)
    if extra <= 0:
        return base[:size].astype(np.float32)
    if kind == "movielens":
        more = base[rng.integers(0, len(base), extra)]
        more += rng.normal(0, NOISE, more.shape).astype(np.float32)
    elif kind == "random":
        more = rng.normal(size=(extra, base.shape[1])).astype(np.float32)
    else:
        raise ValueError(f"kind must be movielens or random, not {kind!r}")
    more /= np.linalg.norm(more, axis=1, keepdims=True)
    return np.vstack([base.astype(np.float32), more])


@dataclass(frozen=True)
class Users:
    """A batch of histories as the ranker gets them (ids) and as the core does (rows)."""

    ids: np.ndarray  # (B, L) object, "" padding
    purchased: np.ndarray  # (B, L) bool
    exclude_ids: np.ndarray  # (B, L) object: the clicked items
    rows: np.ndarray  # (B, L) int64, -1 padding
    weights: np.ndarray  # (B, L) float32

    def __len__(self) -> int:
        return len(self.rows)


def make_users(
    histories: list, purchased: list, batch: int, item_ids: np.ndarray, seed: int = 0
) -> Users:
    """``batch`` histories drawn from MovieLens (catalog rows 0..1681), newest ``HISTORY``."""
    pick = np.random.default_rng(seed).integers(0, len(histories), batch)
    rows = np.full((batch, HISTORY), -1, dtype=np.int64)
    bought = np.zeros((batch, HISTORY), dtype=bool)
    for i, user in enumerate(pick):
        recent = np.asarray(histories[user][-HISTORY:]) - 1  # MovieLens row 1 = catalog row 0
        rows[i, : len(recent)] = recent
        bought[i, : len(recent)] = purchased[user][-HISTORY:]
    ids = np.where(rows >= 0, item_ids[np.clip(rows, 0, None)], "").astype(object)
    return Users(ids, bought, ids, rows, history_weights(rows, bought))


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's true top-k that ``found``'s top-k holds."""
    hits = [len(set(f[:k]) & set(t[:k]) - {-1, ""}) for f, t in zip(found, truth)]
    sizes = [max(1, len(set(t[:k]) - {-1, ""})) for t in truth]
    return float(np.mean(np.divide(hits, sizes)))


class ExactOnly:
    """A catalog seen without its index, so one matrix serves both ranker variants."""

    def __init__(self, catalog: CatalogMatrix) -> None:
        self._catalog = catalog

    def ann_index(self) -> None:
        return None

    def __getattr__(self, name: str):
        return getattr(self._catalog, name)


# -- the cores ---------------------------------------------------------------------------


def one_shot_top_n(catalog: CatalogMatrix, users: Users, n: int):
    """The served code before blocking: a (B, N) matrix, a masked copy, a negated copy."""
    vectors = user_vectors(catalog.text, users.rows, users.weights)
    scores = vectors @ catalog.scoring.T
    scores[:, ~catalog.active] = -np.inf
    return top_k(scores, n, exclude=users.rows)


def blocked_top_n(catalog: CatalogMatrix, users: Users, n: int):
    vectors = user_vectors(catalog.text, users.rows, users.weights)
    return exact_top_n(vectors, catalog.scoring, catalog.active, n, users.rows)


def ann_top_n(catalog: CatalogMatrix, users: Users, n: int):
    vectors = user_vectors(catalog.text, users.rows, users.weights)
    return approximate_top_n(catalog.ann_index(), vectors, n, users.rows, catalog.active)


class TorchCore:
    """The core in PyTorch eager on ``device``; the catalog is shared with numpy on a CPU."""

    def __init__(self, catalog: CatalogMatrix, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.vectors = torch.from_numpy(catalog.scoring).to(self.device)
        self.inactive = torch.from_numpy(np.flatnonzero(~catalog.active)).to(self.device)

    @torch.inference_mode()
    def __call__(self, users: Users, n: int):
        rows = torch.from_numpy(users.rows).to(self.device)
        weights = torch.from_numpy(users.weights).to(self.device)
        gathered = self.vectors[rows.clamp(min=0)]
        summed = torch.einsum("bl,bld->bd", weights, gathered)
        vectors = torch.nn.functional.normalize(summed, dim=1)
        scores = vectors @ self.vectors.T
        scores[:, self.inactive] = -torch.inf
        valid = rows >= 0
        batch_index = torch.arange(len(rows), device=self.device)[:, None].expand_as(rows)
        scores[batch_index[valid], rows[valid]] = -torch.inf
        top = torch.topk(scores, n, dim=1)
        return top.indices.cpu().numpy(), top.values.cpu().numpy()


# -- one catalog -------------------------------------------------------------------------


def measure(fn: Callable[[], object], budget_s: float) -> dict:
    """Seconds per call and the peak memory the call adds to the process."""
    before = rss_bytes()
    reset_peak_rss()
    seconds = timed(fn, budget_s=budget_s)
    return {"seconds": seconds, "peak_extra_mib": mib(max(0, peak_rss_bytes() - before))}


def bench_catalog(
    vectors: np.ndarray,
    histories: list,
    purchased: list,
    batches: list[int],
    ann: AnnConfig,
    kind: str,
    budget_s: float = 1.0,
    one_shot: bool = True,
    recall_users: int = 256,
) -> tuple[list[dict], dict]:
    """Every method at every batch size over one catalog; returns (rows, catalog facts)."""
    ids = np.array([str(i) for i in range(len(vectors))], dtype=object)
    rss_before = rss_bytes()
    catalog = CatalogMatrix(ann=dataclasses.replace(ann, min_items=0))
    started = time.perf_counter()
    catalog.replace(list(ids), vectors)
    load_s = time.perf_counter() - started
    del vectors  # the catalog holds its own copy
    index = catalog.ann_index()
    facts = {
        "catalog": catalog.size,
        "kind": kind,
        "matrix_mib": mib(catalog.text.nbytes),  # zero-shot: scoring is the same array
        "index_mib": mib(index.nbytes),
        "load_and_index_s": load_s,
        "rss_after_load_mib": mib(rss_bytes()),
        "rss_added_by_load_mib": mib(rss_bytes() - rss_before),
        "nprobe": ann.nprobe,
    }
    probe = make_users(histories, purchased, recall_users, ids, seed=99)
    exact_rows, _ = blocked_top_n(catalog, probe, CANDIDATES)
    facts["recall@10"] = recall_at(ann_top_n(catalog, probe, CANDIDATES)[0], exact_rows)
    exact_ranker, ann_ranker = Ranker(ExactOnly(catalog)), Ranker(catalog)
    served = [
        r.rank(probe.ids, probe.purchased, probe.exclude_ids, 10, DIVERSITY).item_ids
        for r in (exact_ranker, ann_ranker)
    ]
    facts["served_overlap@10"] = recall_at(served[1], served[0])
    torch_core = TorchCore(catalog)
    rows = []
    for batch in batches:
        users = make_users(histories, purchased, batch, ids, seed=batch)
        methods = served_methods(catalog, users, torch_core, exact_ranker, ann_ranker)
        if not one_shot:
            del methods["numpy one-shot"]
        for method, fn in methods.items():
            result = measure(fn, budget_s)
            rows.append(
                {
                    "catalog": catalog.size,
                    "kind": kind,
                    "batch": batch,
                    "method": method,
                    "users_per_s": batch / result["seconds"],
                    "ms_per_batch": 1000 * result["seconds"],
                    "peak_extra_mib": result["peak_extra_mib"],
                }
            )
            print(rows[-1], flush=True)
    return rows, facts


def served_methods(
    catalog: CatalogMatrix,
    users: Users,
    torch_core: TorchCore,
    exact_ranker: Ranker,
    ann_ranker: Ranker,
) -> dict[str, Callable[[], object]]:
    def rank(ranker: Ranker) -> Callable[[], object]:
        return lambda: ranker.rank(users.ids, users.purchased, users.exclude_ids, 10, DIVERSITY)

    return {
        "torch eager": lambda: torch_core(users, CANDIDATES),
        "numpy one-shot": lambda: one_shot_top_n(catalog, users, CANDIDATES),
        "numpy blocked": lambda: blocked_top_n(catalog, users, CANDIDATES),
        "ann": lambda: ann_top_n(catalog, users, CANDIDATES),
        "ranker exact": rank(exact_ranker),
        "ranker ann": rank(ann_ranker),
    }


def nprobe_sweep(
    vectors: np.ndarray,
    histories: list,
    purchased: list,
    nprobes: list[int],
    batch: int,
    kind: str,
    budget_s: float = 1.0,
) -> list[dict]:
    """Recall@10 and users/s of the index core as nprobe grows (one index, one build).

    Over ``random`` vectors the users are random too (histories of random rows): a
    MovieLens history would only ever find the MovieLens rows, an easy case."""
    if kind == "random":
        rng = np.random.default_rng(1)
        histories = [tuple(rng.integers(1, len(vectors) + 1, len(h))) for h in histories]
    ids = np.array([str(i) for i in range(len(vectors))], dtype=object)
    catalog = CatalogMatrix(ann=AnnConfig(min_items=0))
    catalog.replace(list(ids), vectors)
    del vectors
    probe = make_users(histories, purchased, 256, ids, seed=99)
    users = make_users(histories, purchased, batch, ids, seed=batch)
    exact_rows, _ = blocked_top_n(catalog, probe, CANDIDATES)
    exact_s = timed(lambda: blocked_top_n(catalog, users, CANDIDATES), budget_s=budget_s)
    rows = []
    for nprobe in nprobes:
        catalog.ann_index().nprobe = nprobe
        recall = recall_at(ann_top_n(catalog, probe, CANDIDATES)[0], exact_rows)
        seconds = timed(lambda: ann_top_n(catalog, users, CANDIDATES), budget_s=budget_s)
        rows.append(
            {
                "catalog": catalog.size,
                "kind": kind,
                "batch": batch,
                "nprobe": nprobe,
                "nlist": catalog.ann_index().nlist,
                "recall@10": recall,
                "users_per_s": batch / seconds,
                "exact_users_per_s": batch / exact_s,
            }
        )
        print(rows[-1], flush=True)
    return rows
