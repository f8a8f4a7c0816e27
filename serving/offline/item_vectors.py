"""BERT vectors for item texts, through the same ONNX graph Triton serves, cached on disk.

Offline training and online serving then see identical item vectors. The cache key is
the ONNX file's digest plus the texts, so a new export or a changed title recomputes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.model_server.tokenize import load_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_VERSION_DIR = Path("model_repository/item_embedder/1")
CACHE_DIR = Path("var/cache/item_vectors")
BATCH = 64


def item_text_vectors(
    texts: list[str], version_dir: Path = DEFAULT_VERSION_DIR, cache_dir: Path = CACHE_DIR
) -> np.ndarray:
    onnx_path = version_dir / "model.onnx"
    if not onnx_path.exists():
        raise FileNotFoundError(f"{onnx_path} is missing: run `make models`")
    key = hashlib.sha256(_file_digest(onnx_path).encode())
    for text in texts:
        key.update(text.encode() + b"\0")
    cache = cache_dir / f"{key.hexdigest()[:24]}.npy"
    if cache.exists():
        return np.load(cache)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(version_dir / "tokenizer.json")
    chunks = []
    for start in range(0, len(texts), BATCH):
        input_ids, mask = tokenizer.encode_batch(texts[start : start + BATCH])
        chunks.append(session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0])
    vectors = np.concatenate(chunks).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    logger.info('item vectors computed texts=%d cache="%s"', len(texts), cache)
    return vectors


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
