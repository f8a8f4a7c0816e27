"""Triton python-backend model: user histories -> top-K catalog items.

A version directory holding ``head.json`` serves the trained scoring head (ONNX, see
``serving/export_head.py``); one without serves the zero-shot weighted mean of BERT item
vectors. Either way the catalog's BERT vectors live in Redis and are reloaded whenever
their version counter moves, so upserted items are scorable on the next request. The
maths is in ``serving.scoring`` / ``serving.head_runtime``; this file only moves tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.head_runtime import HeadRuntime
from serving.scoring import recommend
from serving.triton._common import (
    answer_each,
    config_parameter,
    input_array,
    output_dtype,
    request_parameter,
)
from stream_app.catalog import CatalogReader, redis_client
from stream_app.config import Settings


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.score_dtype = output_dtype(config, "TOP_SCORES")
        self.default_k = int(config_parameter(config, "default_top_k", "10"))
        self.max_k = int(config_parameter(config, "max_top_k", "100"))
        threads = int(config_parameter(config, "intra_op_threads", "0"))
        self.head = (
            HeadRuntime(version_dir, threads) if (version_dir / "head.json").exists() else None
        )
        self.model_version = (
            self.head.model_version
            if self.head
            else config_parameter(config, "zero_shot_version", "weighted-mean-v1")
        )
        # Redis address and key prefix come from the same STREAMREC_ settings as the worker.
        settings = Settings()
        self.catalog = CatalogReader(redis_client(settings), settings.redis.key_prefix)

    def _recommend(self, request):
        k = request_parameter(request, "top_k", self.default_k)
        if not 1 <= k <= self.max_k:
            raise ValueError(f"top_k must be between 1 and {self.max_k}, got {k}")
        item_ids = input_array(request, "HISTORY_IDS")
        purchased = input_array(request, "HISTORY_PURCHASED").astype(bool)
        if item_ids.shape != purchased.shape:
            raise ValueError("HISTORY_IDS and HISTORY_PURCHASED must have the same shape")
        if self.catalog.vectors.size == 0:
            raise ValueError("the catalog is empty: load it with `streamrec catalog`")
        rows = self.catalog.rows(item_ids)
        if self.head:
            indices, scores = self.head.recommend(rows, purchased, k)
        else:
            indices, scores = recommend(self.catalog.vectors, rows, purchased, k)
        ids = np.where(indices >= 0, self.catalog.item_ids[np.clip(indices, 0, None)], b"")
        version = np.full((len(ids), 1), self.model_version.encode(), dtype=np.object_)
        return [
            pb_utils.Tensor("TOP_IDS", ids.astype(np.object_)),
            pb_utils.Tensor("TOP_SCORES", scores.astype(self.score_dtype)),
            pb_utils.Tensor("MODEL_VERSION", version),
        ]

    def execute(self, requests):
        if self.catalog.refresh() and self.head:  # one cheap GET per batch of requests
            self.head.load_catalog(self.catalog.item_ids, self.catalog.vectors)
        return answer_each(requests, self._recommend)
