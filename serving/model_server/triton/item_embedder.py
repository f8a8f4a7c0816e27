"""Triton python-backend model: item text -> unit vector (tokenizer + ONNX Runtime).

All requests of a dynamic batch are tokenised and run through ONNX Runtime together,
then split back, so Triton's batching turns into one matrix multiply per layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from serving.model_server.tokenize import load_tokenizer
from serving.model_server.triton.tensor_io import config_parameter, input_array, output_dtype


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.out_dtype = output_dtype(config, "EMBEDDING")
        self.max_chars = int(config_parameter(config, "max_text_chars", "4000"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(config_parameter(config, "intra_op_threads", "0"))
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = load_tokenizer(version_dir / "tokenizer.json")

    def _texts(self, request) -> list[str]:
        texts = []
        for raw in input_array(request, "TEXT").reshape(-1):
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            if not text.strip():
                raise ValueError("TEXT must not be empty")
            if len(text) > self.max_chars:
                raise ValueError(f"TEXT longer than {self.max_chars} characters")
            texts.append(text)
        return texts

    def execute(self, requests):
        batches, errors = [], {}
        for index, request in enumerate(requests):
            try:
                batches.append(self._texts(request))
            except Exception as exc:  # noqa: BLE001  (answered as this request's error)
                errors[index] = str(exc)
                batches.append([])
        all_texts = [t for texts in batches for t in texts]
        vectors = np.empty((0, 0), dtype=self.out_dtype)
        if all_texts:
            input_ids, attention_mask = self.tokenizer.encode_batch(all_texts)
            (vectors,) = self.session.run(
                None, {"input_ids": input_ids, "attention_mask": attention_mask}
            )
        responses, start = [], 0
        for index, texts in enumerate(batches):
            if index in errors:
                error = pb_utils.TritonError(errors[index])
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            chunk = vectors[start : start + len(texts)].astype(self.out_dtype)
            start += len(texts)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EMBEDDING", chunk)])
            )
        return responses
