"""Helpers shared by the python-backend models: config-driven dtypes, per-request errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import triton_python_backend_utils as pb_utils


def output_dtype(model_config: dict, name: str) -> np.dtype:
    """The numpy dtype config.pbtxt declares for an output (never a constant in code)."""
    config = pb_utils.get_output_config_by_name(model_config, name)
    return pb_utils.triton_string_to_numpy(config["data_type"])


def config_parameter(model_config: dict, name: str, default: str) -> str:
    parameters = model_config.get("parameters", {})
    return parameters.get(name, {}).get("string_value", default)


def request_parameter(request, name: str, default: float, cast: Callable = int):
    return cast(json.loads(request.parameters() or "{}").get(name, default))


def input_array(request, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input {name}")
    return tensor.as_numpy()


def answer_each(requests, handle: Callable) -> list:
    """Run ``handle`` per request; a bad request gets its own error, the model keeps serving."""
    responses = []
    for request in requests:
        try:
            tensors = handle(request)
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        except Exception as exc:  # noqa: BLE001  (the error travels back to the caller)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
            )
    return responses
