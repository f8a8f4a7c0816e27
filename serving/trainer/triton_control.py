"""Tell Triton to serve the newest recommender version, through its repository API.

Triton runs with ``--model-control-mode=explicit``: it reads the repository only when
asked. Loading a model that is already served loads the new version beside the old one,
switches requests over once it is ready and then unloads the old one, so no request
finds the model missing (see the trainer tests). A version that fails to load leaves the
model as it was.
"""

from __future__ import annotations

import time

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def load_latest(url: str, model: str, version: int, timeout_s: float = 120.0) -> float:
    """Load ``model`` from the repository and wait until ``version`` is ready; returns
    the seconds it took."""
    started = time.monotonic()
    with grpcclient.InferenceServerClient(url) as client:
        client.load_model(model, client_timeout=timeout_s)
        while not _ready(client, model, version):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{model} version {version} not ready after {timeout_s:.0f} s")
            time.sleep(0.1)
    return time.monotonic() - started


def served_versions(url: str, model: str) -> list[int]:
    """The versions of ``model`` Triton has loaded and ready."""
    with grpcclient.InferenceServerClient(url) as client:
        index = client.get_model_repository_index(as_json=True).get("models", [])
    return sorted(
        int(m["version"]) for m in index if m.get("name") == model and m.get("state") == "READY"
    )


def _ready(client: grpcclient.InferenceServerClient, model: str, version: int) -> bool:
    try:
        return client.is_model_ready(model, str(version))
    except InferenceServerException:
        return False
