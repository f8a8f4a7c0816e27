"""Export a trained scoring head into the Triton model repository, checked for parity.

Writes ``model_repository/recommender/<version>/``: two ONNX graphs (the item tower, run
whenever the catalog changes, and the sequence encoder, run per request), ``head.json``
(version tag, max length, the item ids that have learned embeddings) and the model.py
shim. The parity check compares ONNX Runtime with PyTorch on validation users: max abs
score difference and the same top-10 lists up to ties; a failing export never lands.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from serving.model_server.scoring import same_ranking, top_k
from serving.offline.head import ScoringHead

logger = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-3
SHIM = Path("model_repository/recommender/1/model.py")
CHECKPOINT = "head.pt"


class _SequenceUser(nn.Module):
    """Sequence encoder + last position: the per-request graph (the parity check compares
    it with the full encoder that training runs)."""

    def __init__(self, model: ScoringHead) -> None:
        super().__init__()
        self.sequence = model.sequence

    def forward(self, history_vectors: torch.Tensor, event_types: torch.Tensor) -> torch.Tensor:
        return self.sequence(history_vectors, event_types, last_only=True)[:, -1]


def export_head(
    model: ScoringHead,
    item_ids: tuple[str, ...],
    trained_rows: set[int],
    version_dir: Path,
    model_version: str,
    parity_rows: np.ndarray,
    parity_types: np.ndarray,
    provenance: dict | None = None,
    encoder_version: int = 1,
) -> dict:
    """Write the head under ``version_dir`` (replacing it whole); returns the parity report."""
    # A leading dot: Triton reads "2.tmp" as version 2, but ignores ".2.tmp".
    tmp = version_dir.with_name(f".{version_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    report = write_head(
        model,
        item_ids,
        trained_rows,
        tmp,
        model_version,
        parity_rows,
        parity_types,
        provenance,
        encoder_version,
    )
    shutil.rmtree(version_dir, ignore_errors=True)
    tmp.rename(version_dir)
    return report


def write_head(
    model: ScoringHead,
    item_ids: tuple[str, ...],
    trained_rows: set[int],
    out_dir: Path,
    model_version: str,
    parity_rows: np.ndarray,
    parity_types: np.ndarray,
    provenance: dict | None = None,
    encoder_version: int = 1,
) -> dict:
    """Everything a served version holds, into the new directory ``out_dir``: the ONNX
    graphs, ``head.json`` (with ``provenance``: what the version learned from), the
    model.py shim and ``head.pt``, the PyTorch weights a later training warm-starts from.
    Raises, leaving ``out_dir`` incomplete, if ONNX and PyTorch disagree."""
    model.eval()
    out_dir.mkdir(parents=True)
    text = model.text_vectors
    rows = torch.arange(text.shape[0])
    hidden = model.config.hidden
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that the attention scale, a Python float of the traced shape, is
        # a constant in the graph: it is, the head's width being fixed.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model.items,
            (text, rows),
            str(out_dir / "item_tower.onnx"),
            input_names=["text_vectors", "id_rows"],
            output_names=["item_vectors"],
            dynamic_axes={"text_vectors": {0: "n"}, "id_rows": {0: "n"}, "item_vectors": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
        example = torch.zeros(2, model.config.max_len, hidden)
        torch.onnx.export(
            _SequenceUser(model).eval(),  # a fresh module starts in training mode
            (example, torch.ones(2, model.config.max_len, dtype=torch.long)),
            str(out_dir / "sequence_encoder.onnx"),
            input_names=["history_vectors", "event_types"],
            output_names=["user_vectors"],
            dynamic_axes={
                "history_vectors": {0: "batch"},
                "event_types": {0: "batch"},
                "user_vectors": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    # Exporting restores each module's mode afterwards; be sure nothing is left training.
    report = check_parity(model.eval(), out_dir, parity_rows, parity_types)
    metadata = {
        "model_version": model_version,
        "max_len": model.config.max_len,
        # The item_embedder version whose vectors it was trained on, and must rank with.
        "encoder_version": encoder_version,
        "config": model.config.to_dict(),
        # Items with a learned embedding; any other item is scored by its text alone.
        "id_rows": {item_ids[r - 1]: r for r in sorted(trained_rows)},
        "parity": report,
        "provenance": provenance or {},
    }
    torch.save(checkpoint(model, item_ids, trained_rows), out_dir / CHECKPOINT)
    shutil.copyfile(SHIM, out_dir / "model.py")
    # head.json last: a directory with it is complete (see serving.trainer.versions).
    (out_dir / "head.json").write_text(json.dumps(metadata, indent=1))
    return report


def checkpoint(model: ScoringHead, item_ids: Sequence[str], trained_rows: set[int]) -> dict:
    """The head's weights and catalog rows, as ``head.pt`` holds them."""
    return {
        "config": model.config.to_dict(),
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "item_ids": list(item_ids),
        "trained_rows": sorted(trained_rows),
    }


def check_parity(model: ScoringHead, onnx_dir: Path, rows: np.ndarray, types: np.ndarray) -> dict:
    with torch.no_grad():
        catalog = model.catalog()
        expected = (
            model.user_vectors(catalog, torch.from_numpy(rows), torch.from_numpy(types)) @ catalog.T
        ).numpy()
    text = model.text_vectors.numpy()
    tower = ort.InferenceSession(
        str(onnx_dir / "item_tower.onnx"), providers=["CPUExecutionProvider"]
    )
    encoder = ort.InferenceSession(
        str(onnx_dir / "sequence_encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    id_rows = model.id_rows.numpy()
    (onnx_catalog,) = tower.run(None, {"text_vectors": text, "id_rows": id_rows})
    (users,) = encoder.run(None, {"history_vectors": onnx_catalog[rows], "event_types": types})
    actual = users @ onnx_catalog.T
    max_diff = float(np.abs(expected - actual).max())
    mask = np.where(rows > 0, rows, -1)
    expected_top, _ = top_k(expected[:, 1:], 10, exclude=np.where(mask > 0, mask - 1, -1))
    actual_top, _ = top_k(actual[:, 1:], 10, exclude=np.where(mask > 0, mask - 1, -1))
    identical = float((expected_top == actual_top).all(axis=1).mean())
    # A near-tie at the tenth place may fall either way (CI once saw 1 user in 200 with
    # a 4e-7 difference): the lists must agree up to ties, not be identical.
    tie = 2 * max_diff + 1e-6
    agree = float(same_ranking(expected[:, 1:], expected_top, actual_top, tie).mean())
    report = {
        "users": len(rows),
        "max_abs_score_diff": max_diff,
        "identical_top10_share": identical,
        "same_top10_up_to_ties_share": agree,
    }
    logger.info("head onnx parity %s", report)
    if max_diff > SCORE_TOLERANCE or agree < 1.0:
        raise RuntimeError(f"ONNX head differs from PyTorch: {report}")
    return report
