"""Triton loads this file; the model lives in serving/model_server/triton/recommender.py."""

from serving.model_server.triton.recommender import TritonPythonModel  # noqa: F401
