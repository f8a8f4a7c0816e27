"""The GPU benchmark's code path, run on the CPU with tiny sizes (CI has no GPU)."""

import numpy as np
import torch

from bench import gpu_speed
from bench.minilm_torch import MiniLM, bundled_weights, load_bert_state
from serving.model_server.tokenize import load_tokenizer
from serving.offline.encoder import ItemEncoder, bundled_model_dir


def test_plain_torch_minilm_matches_the_served_encoder():
    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")
    ids, mask = tokenizer.encode_batch(["Toy Story (1995) Animation", "a", "GoldenEye (1995)"])
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        expected = ItemEncoder().eval()(ids, mask)
        actual = load_bert_state(MiniLM(), bundled_weights()).eval()(ids, mask)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_scoring_and_encoder_benchmarks_run_on_cpu(tmp_path):
    results = gpu_speed.main(
        ["--device", "cpu", "--out", str(tmp_path), "--items", "300", "--batches", "2",
         "--scoring", "eager fp32", "eager bf16", "--embed-batches", "2", "--tokens", "8",
         "--encoder", "eager fp32", "eager bf16", "--budget-s", "0"]
    )  # fmt: skip
    scoring = [r for r in results["rows"] if r["part"] == "scoring"]
    encoder = [r for r in results["rows"] if r["part"] == "encoder"]
    assert [r["variant"] for r in scoring] == ["eager fp32", "eager bf16"]
    assert scoring[0]["top10_same"] == 1.0 and 0 <= scoring[1]["top10_same"] <= 1
    assert encoder[0]["cos_min"] > 0.9999 and encoder[1]["cos_mean"] > 0.99
    assert all(r["users_per_s"] > 0 for r in scoring) and all(r["tflops"] > 0 for r in encoder)
    text = (tmp_path / "gpu.md").read_text()
    assert "| 300 | 2 | eager bf16 |" in text and "Encoder weights: all-MiniLM-L6-v2" in text


def test_peak_share_uses_the_precision_of_the_variant():
    row = {"tflops": 98.9, "precision": "bf16"}
    assert np.isclose(gpu_speed.peak_share(row), 0.1)
