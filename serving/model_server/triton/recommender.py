"""Triton python-backend model: user histories -> top-K catalog items, with explanations.

A version directory holding ``head.json`` serves the trained scoring head (ONNX, see
``serving/offline/export_head.py``); one without serves the zero-shot weighted mean of BERT item
vectors. Either way the catalog lives in Redis: each model instance loads a snapshot and
then tails the catalog log in a background thread, so an upserted item is scorable as
soon as its log entry is read (``streamrec_catalog_freshness_seconds`` on Triton's
metrics port measures how soon). The maths is in ``serving.model_server.ranker``; this file only
moves tensors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.model_server.ann_index import DEFAULT_MIN_ITEMS, AnnConfig
from serving.model_server.catalog_matrix import CatalogMatrix
from serving.model_server.catalog_tailer import CatalogTailer
from serving.model_server.fresh_items import Fresh, FreshQuery
from serving.model_server.head_runtime import HeadRuntime
from serving.model_server.ranker import Ranker
from serving.model_server.redis_connection import connect_redis
from serving.model_server.triton.tensor_io import (
    answer_each,
    config_parameter,
    input_array,
    output_dtype,
    request_parameter,
)
from stream_app.core.id_lists import join_rows, padded, split_rows
from stream_app.core.settings import load_settings

FRESHNESS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.score_dtype = output_dtype(config, "TOP_SCORES")
        self.default_k = int(config_parameter(config, "default_top_k", "10"))
        self.max_k = int(config_parameter(config, "max_top_k", "100"))
        self.candidates = int(config_parameter(config, "diversity_candidates", "50"))
        threads = int(config_parameter(config, "intra_op_threads", "0"))
        head = HeadRuntime(version_dir, threads) if (version_dir / "head.json").exists() else None
        self.model_version = (
            head.model_version
            if head
            else config_parameter(config, "zero_shot_version", "weighted-mean-v1")
        )
        # Beyond ann_min_items active items ("off": never) the ranker searches an IVF index,
        # built in a thread: requests are served by the exact scan until it is ready.
        ann = AnnConfig.parse(
            config_parameter(config, "ann_min_items", str(DEFAULT_MIN_ITEMS)),
            config_parameter(config, "ann_nprobe", str(AnnConfig.nprobe)),
        )
        transform = head.item_vectors if head else None
        matrix = CatalogMatrix(transform=transform, ann=ann, background_index=True)
        self.ranker = Ranker(matrix, head)
        freshness = pb_utils.MetricFamily(
            name="streamrec_catalog_freshness_seconds",
            description="From a catalog upsert entering Kafka to the item being scorable"
            " in this recommender instance.",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self._freshness = freshness.Metric(
            labels={"model": args["model_name"], "version": args["model_version"]},
            buckets=FRESHNESS_BUCKETS,
        )
        self._families = [freshness]  # metric families must outlive their metrics
        # Redis address and key prefix come from the same STREAMREC_ settings as the worker.
        settings = load_settings()
        # The tailer blocks up to a second on XREAD: its socket must wait longer than that.
        client = connect_redis(settings.redis, timeout_s=settings.redis.timeout_s + 1.0)
        encoder_version = head.encoder_version if head else 1
        self.tailer = CatalogTailer(
            client, settings.redis.key_prefix, matrix, self._freshness.observe, encoder_version
        )
        self.tailer.start()

    def _recommend(self, request) -> list:
        k = request_parameter(request, "top_k", self.default_k)
        if not 1 <= k <= self.max_k:
            raise ValueError(f"top_k must be between 1 and {self.max_k}, got {k}")
        diversity = request_parameter(request, "diversity", 1.0, float)
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must be between 0 and 1, got {diversity}")
        purchased = input_array(request, "HISTORY_PURCHASED").astype(bool)
        histories = split_rows(input_array(request, "HISTORY"))
        if len(histories) != len(purchased) or any(len(h) > purchased.shape[1] for h in histories):
            raise ValueError("HISTORY_PURCHASED needs a row per history, as wide as the longest")
        item_ids = padded(histories, purchased.shape[1])
        exclude = pb_utils.get_input_tensor_by_name(request, "EXCLUDE")
        excluded = split_rows(exclude.as_numpy()) if exclude is not None else [[]] * len(histories)
        if len(excluded) != len(histories):
            raise ValueError("EXCLUDE needs one row per history")
        fresh = _fresh_query(request)
        with self.tailer.lock:
            ranked = self.ranker.rank(
                item_ids, purchased, padded(excluded), k, diversity, max(self.candidates, k), fresh
            )
        version = np.full((len(item_ids), 1), self.model_version.encode(), dtype=np.object_)
        new = ranked.fresh or Fresh.none(len(item_ids))
        return [
            pb_utils.Tensor("TOP_ITEMS", join_rows(ranked.item_ids.tolist())),
            pb_utils.Tensor("TOP_SCORES", ranked.scores.astype(self.score_dtype)),
            pb_utils.Tensor("BECAUSE_ITEMS", join_rows(ranked.because_ids.tolist())),
            pb_utils.Tensor("MODEL_VERSION", version),
            pb_utils.Tensor("FRESH_ITEMS", join_rows(new.item_ids.tolist())),
            pb_utils.Tensor("FRESH_SCORES", new.similarity.astype(self.score_dtype)),
            pb_utils.Tensor("FRESH_BECAUSE_ITEMS", join_rows(new.because_ids.tolist())),
        ]

    def execute(self, requests):
        return answer_each(requests, self._recommend)

    def finalize(self) -> None:
        self.tailer.stop()


def _fresh_query(request) -> FreshQuery | None:
    """Exploration's request parameters; None unless ``explore_count`` asks for new items."""
    count = request_parameter(request, "explore_count", 0)
    if count == 0:
        return None
    if not 1 <= count <= 50:
        raise ValueError(f"explore_count must be between 0 and 50, got {count}")
    max_age = request_parameter(request, "explore_max_age_s", 0.0, float)
    recent = request_parameter(request, "explore_recent", 10)
    if max_age <= 0 or recent < 1:
        raise ValueError("explore_max_age_s must be > 0 and explore_recent >= 1")
    return FreshQuery(
        since=time.time() - max_age,
        min_similarity=request_parameter(request, "explore_min_similarity", 0.6, float),
        recent=recent,
        count=count,
    )
