"""Triton loads this file; the model lives in serving/model_server/triton/item_embedder.py."""

from serving.model_server.triton.item_embedder import TritonPythonModel  # noqa: F401
