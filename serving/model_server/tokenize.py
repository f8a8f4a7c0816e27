"""The BERT WordPiece tokenizer, shared by export, offline encoding and the Triton model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

MAX_SEQUENCE_LENGTH = 128
"""Longer texts are truncated; MovieLens titles use about 20 tokens."""


@dataclass
class BatchTokenizer:
    """Texts -> (input_ids, attention_mask) int64 arrays, padded to the longest text."""

    tokenizer: Tokenizer

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return input_ids, attention_mask


def load_tokenizer(path: Path, max_length: int = MAX_SEQUENCE_LENGTH) -> BatchTokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return BatchTokenizer(tokenizer)
