"""Triton loads this file; the model lives in serving/triton/item_embedder.py."""

from serving.triton.item_embedder import TritonPythonModel  # noqa: F401
