"""The GPU benchmark's code path, run on the CPU with tiny sizes (CI has no GPU)."""

import numpy as np
import torch

from bench import gpu_common, gpu_speed
from bench.minilm_torch import MiniLM, bundled_weights, load_bert_state
from serving.model_server.tokenize import load_tokenizer
from serving.offline.encoder import ItemEncoder, bundled_model_dir
from serving.offline.head import HeadConfig, ScoringHead


def test_plain_torch_minilm_matches_the_served_encoder():
    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")
    ids, mask = tokenizer.encode_batch(["Toy Story (1995) Animation", "a", "GoldenEye (1995)"])
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        expected = ItemEncoder().eval()(ids, mask)
        actual = load_bert_state(MiniLM(), bundled_weights()).eval()(ids, mask)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def _tiny_head(path):
    """A head payload as ``bench.gpu_payload`` writes it, with random weights."""
    config = HeadConfig(n_items=40, hidden=16, layers=1, heads=2, max_len=6)
    model = ScoringHead(config, torch.randn(41, 384))
    rows = torch.randint(1, 41, (5, 6))
    rows[0, :3] = 0  # a short history, left-padded
    torch.save(
        {
            "config": config.to_dict(),
            "state_dict": model.state_dict(),
            "text_vectors": model.text_vectors,
            "id_rows": model.id_rows,
            "rows": rows,
            "types": (rows > 0).long(),
        },
        path / "head.pt",
    )


def test_head_scoring_and_encoder_benchmarks_run_on_cpu(tmp_path):
    _tiny_head(tmp_path)
    results = gpu_speed.main(
        ["--device", "cpu", "--out", str(tmp_path), "--payload", str(tmp_path),
         "--items", "60", "300", "--batches", "2", "--variants", "cpu fp32", "eager fp32",
         "eager bf16", "graph fp32", "--embed-batches", "2", "--tokens", "8", "--budget-s", "0"]
    )  # fmt: skip
    head, scoring, encoder = (
        [r for r in results["rows"] if r["part"] == part] for part in ("head", "scoring", "encoder")
    )
    # CUDA graphs need a GPU: a CPU run leaves them out
    variants = ["cpu fp32", "eager fp32", "eager bf16"]
    assert [r["variant"] for r in scoring] == variants * 2
    assert [(r["items"], r["variant"]) for r in head] == [
        (items, name) for items in (60, 300) for name in variants
    ]
    for part in (head, scoring):  # fp32 again, on the same inputs: the same lists
        assert all(r["top10_same_up_to_ties"] == 1.0 for r in part if "fp32" in r["variant"])
        assert all(0 <= r["top10_overlap"] <= 1 and r["users_per_s"] > 0 for r in part)
    assert encoder[1]["cos_min"] > 0.9999 and encoder[2]["cos_mean"] > 0.99
    assert all(r["tflops"] > 0 for r in encoder)
    text = (tmp_path / "gpu.md").read_text()
    assert "| 300 | 2 | eager bf16 |" in text and "Encoder weights: all-MiniLM-L6-v2" in text
    assert "No ceilings: not run on a GPU." in text


def test_a_run_past_its_deadline_writes_what_it_measured(tmp_path):
    results = gpu_speed.main(
        ["--device", "cpu", "--out", str(tmp_path), "--parts", "scoring", "--items", "60",
         "--batches", "2", "--variants", "cpu fp32", "--budget-s", "0", "--deadline-s", "0"]
    )  # fmt: skip
    assert results["rows"] == [] and results["skipped"] == ["scoring 60 2 cpu fp32"]
    assert (
        "Left out at the run's deadline (1): scoring 60 2 cpu fp32"
        in (tmp_path / "gpu.md").read_text()
    )


def test_list_parity_counts_ties_as_the_same_list():
    users = torch.tensor([[1.0, 0.0]])
    catalog = torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.5, 0.0], [0.2, 0.0]])
    expected = torch.tensor([[1, 2]])
    swapped, wrong = torch.tensor([[2, 1]]), torch.tensor([[1, 3]])
    assert gpu_common.list_parity((users, expected), swapped, catalog) == {
        "top10_overlap": 1.0, "top10_same_up_to_ties": 1.0
    }  # fmt: skip
    assert gpu_common.list_parity((users, expected), wrong, catalog) == {
        "top10_overlap": 0.5, "top10_same_up_to_ties": 0.0
    }  # fmt: skip


def test_peak_share_uses_the_measured_ceiling_of_the_variant():
    measured = {"bf16_tflops": 790.0, "fp32_tflops": 50.0}
    assert np.isclose(
        gpu_speed.peak_share(
            {"tflops": 79.0, "precision": "bf16", "variant": "eager bf16"}, measured
        ),
        0.1,
    )
    cpu = {"tflops": 1.0, "precision": "fp32", "variant": "cpu fp32"}
    assert np.isnan(gpu_speed.peak_share(cpu, measured))
