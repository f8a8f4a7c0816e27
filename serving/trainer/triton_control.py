"""Tell Triton to serve the newest recommender version, through its repository API.

Triton runs with ``--model-control-mode=explicit``: it reads the repository only when
asked. Loading a model that is already served loads the new version beside the old one,
switches requests over once it is ready and then unloads the old one, so no request
finds the model missing (see the trainer tests). A version that fails to load leaves the
model as it was.

Experiment arms may name older versions (``STREAMREC_EXPERIMENT__ARMS``): then the load
request carries the model's config with version policy ``specific``, so Triton serves
those versions beside the newest (a request without a version gets the newest).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as model_config
from google.protobuf import json_format, text_format
from tritonclient.utils import InferenceServerException

from stream_app.core.experiments import Experiment
from stream_app.core.settings import Settings


def load_latest(
    url: str,
    model: str,
    version: int,
    timeout_s: float = 120.0,
    also: Sequence[int] = (),
    model_dir: Path | None = None,
) -> float:
    """Load ``model`` from the repository and wait until ``version`` (the newest) and
    the versions in ``also`` are ready; returns the seconds it took. ``also`` needs the
    model's directory (its config.pbtxt)."""
    started = time.monotonic()
    wanted = sorted({version, *also})
    config = None
    if len(wanted) > 1:
        if model_dir is None:
            raise ValueError("serving several versions needs the model directory")
        config = serving_config(model_dir, wanted)
    with grpcclient.InferenceServerClient(url) as client:
        client.load_model(model, config=config, client_timeout=timeout_s)
        for number in wanted:
            while not _ready(client, model, number):
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(
                        f"{model} version {number} not ready after {timeout_s:.0f} s"
                    )
                time.sleep(0.1)
    return time.monotonic() - started


def load_served(settings: Settings, newest: int, timeout_s: float = 120.0) -> float:
    """Load the recommender so that it serves ``newest`` and every version an experiment
    arm names; returns the seconds it took."""
    triton = settings.triton
    return load_latest(
        triton.url,
        triton.recommender_model,
        newest,
        timeout_s,
        also=Experiment.of(settings.experiment).pinned_versions(),
        model_dir=Path(triton.model_repository) / triton.recommender_model,
    )


def unload(url: str, model: str) -> None:
    """Stop serving ``model`` (requests for it then fail at once)."""
    with grpcclient.InferenceServerClient(url) as client:
        client.unload_model(model)


def serving_config(model_dir: Path, versions: Sequence[int]) -> str:
    """The model's config.pbtxt as the JSON a load request takes, serving ``versions``."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config.ModelConfig())
    config.version_policy.specific.versions[:] = sorted(versions)
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


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
