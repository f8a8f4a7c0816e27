"""Triton python-backend model: user histories -> top-K catalog items.

The catalog (item vectors) lives in Redis and is reloaded whenever its version counter
moves, so items written by the catalog command or agent are scorable within one request.
The maths is ``serving.scoring.recommend``; this file only moves tensors.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

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
        self.score_dtype = output_dtype(config, "TOP_SCORES")
        self.default_k = int(config_parameter(config, "default_top_k", "10"))
        self.max_k = int(config_parameter(config, "max_top_k", "100"))
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
        indices, scores = recommend(self.catalog.vectors, rows, purchased, k)
        ids = np.where(indices >= 0, self.catalog.item_ids[np.clip(indices, 0, None)], b"")
        return [
            pb_utils.Tensor("TOP_IDS", ids.astype(np.object_)),
            pb_utils.Tensor("TOP_SCORES", scores.astype(self.score_dtype)),
        ]

    def execute(self, requests):
        self.catalog.refresh()  # one cheap GET per batch of requests
        return answer_each(requests, self._recommend)
