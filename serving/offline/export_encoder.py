"""Export the item encoder to ONNX and lay out the Triton model repository.

Writes ``model_repository/item_embedder/1/model.onnx`` (the bundled MiniLM) and its
``tokenizer.json``; configs and the thin ``model.py`` shims are committed. Version 2 and
up are fine-tuned encoders: the bundled model with a LoRA adapter (``streamrec finetune``)
merged in. Prints a parity check of the ONNX graph against PyTorch so a bad export fails
loudly here, not in production.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from serving.model_server.tokenize import load_tokenizer
from serving.offline.encoder import ItemEncoder, bundled_model_dir

logger = logging.getLogger(__name__)

PARITY_TEXTS = [
    "Toy Story (1995) Animation Children's Comedy",
    "GoldenEye (1995) Action Adventure Thriller",
    "a",
    "An extremely long item description " * 40,
]
PARITY_TOLERANCE = 1e-4


SHIM_VERSION = "1"
"""The version directory whose committed ``model.py`` every other version copies."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def export_item_embedder(
    repository: Path,
    force: bool = False,
    version: int = 1,
    adapter: Path | None = None,
    int8: bool = False,
) -> Path:
    """Write an encoder's ONNX graph and tokenizer as ``item_embedder/<version>`` under
    ``repository`` and return the directory: version 1 is the bundled MiniLM; a later one
    is it with a LoRA ``adapter`` merged in, or (``int8``) version 1's graph quantised."""
    if (version == 1) != (adapter is None and not int8) or (adapter is not None and int8):
        raise ValueError("version 1 is the bundled encoder; a later one: an adapter or int8")
    version_dir = repository / "item_embedder" / str(version)
    exported = (version_dir / "model.onnx").exists() and (version_dir / "tokenizer.json").exists()
    if exported and not force:
        logger.info('item_embedder already exported path="%s"', version_dir)
        return version_dir
    first = repository / "item_embedder" / SHIM_VERSION
    if version == 1:
        return export_encoder(bundled_model_dir(), version_dir)
    if int8:
        quantize_int8(first / "model.onnx", version_dir / "model.onnx")
        shutil.copyfile(first / "tokenizer.json", version_dir / "tokenizer.json")
    else:
        assert adapter is not None
        with tempfile.TemporaryDirectory() as merged:
            export_encoder(merge_adapter(adapter, Path(merged)), version_dir)
    shutil.copyfile(first / "model.py", version_dir / "model.py")
    return version_dir


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic INT8 weights, one scale per output channel (per-tensor scales lost too much:
    bench/results/encoder/compression.md measured the choice); activations stay fp32."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # Fused graphs' contrib ops defeat shape inference; their outputs are fp32.
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    return target


def merge_adapter(adapter: Path, out_dir: Path) -> Path:
    """The bundled model with the LoRA adapter in ``adapter`` merged in, saved as a plain
    Hugging Face model directory (with the bundled tokenizer) in ``out_dir``."""
    from peft import PeftModel

    base = ItemEncoder().bert
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    copy_tokenizer(bundled_model_dir(), out_dir)
    return out_dir


def copy_tokenizer(source: Path, model_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, model_dir / name)


def export_encoder(model_dir: Path, version_dir: Path) -> Path:
    """The encoder whose weights and tokenizer lie in ``model_dir`` (a Hugging Face model
    directory: the bundled MiniLM or a fine-tuned one) as ``version_dir/model.onnx`` and
    ``version_dir/tokenizer.json``, checked against PyTorch before it lands."""
    onnx_path = version_dir / "model.onnx"
    version_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_path = version_dir / "tokenizer.json"
    shutil.copyfile(model_dir / "tokenizer.json", tokenizer_path)
    tokenizer = load_tokenizer(tokenizer_path)
    encoder = ItemEncoder(model_dir).eval()
    input_ids, attention_mask = tokenizer.encode_batch(PARITY_TEXTS[:2])

    logger.info('exporting item encoder to ONNX path="%s"', onnx_path)
    tmp_path = onnx_path.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(
            encoder,
            (torch.from_numpy(input_ids), torch.from_numpy(attention_mask)),
            str(tmp_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    check_parity(encoder, tmp_path, tokenizer)
    tmp_path.replace(onnx_path)  # only a checked graph ever lands in the repository
    return version_dir


def check_parity(encoder: ItemEncoder, onnx_path: Path, tokenizer) -> float:
    """Max abs difference between PyTorch and ONNX Runtime vectors; raises above tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_ids, attention_mask = tokenizer.encode_batch(PARITY_TEXTS)
    with torch.no_grad():
        expected = encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
    (actual,) = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
    max_diff = float(np.abs(expected - actual).max())
    logger.info("onnx parity max_abs_diff=%.2e tolerance=%.0e", max_diff, PARITY_TOLERANCE)
    if max_diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch: max abs diff {max_diff:.2e}")
    return max_diff
