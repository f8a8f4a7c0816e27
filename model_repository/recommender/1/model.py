"""Triton loads this file; the model lives in serving/triton/recommender.py."""

from serving.triton.recommender import TritonPythonModel  # noqa: F401
