"""Distilling the item encoder: which layers the student keeps, and that it is the
teacher's graph with fewer layers (same tokenizer, pooling and output)."""

import pytest
import torch

from serving.model_server.tokenize import load_tokenizer
from serving.offline.distill_encoder import DistillConfig, cosine_loss, kept_layers, student_of
from serving.offline.encoder import ItemEncoder, bundled_model_dir


def test_the_student_keeps_evenly_spaced_layers_ending_with_the_last():
    assert kept_layers(6, 3) == [1, 3, 5]
    assert kept_layers(6, 2) == [2, 5]
    assert kept_layers(6, 1) == [5]
    assert kept_layers(6, 5)[-1] == 5 and len(set(kept_layers(6, 5))) == 5


def test_the_student_is_the_teacher_with_those_layers_and_learns_nothing_else():
    teacher = ItemEncoder().eval()
    student = student_of(teacher, 3).eval()
    assert len(student.bert.encoder.layer) == 3 and student.bert.config.num_hidden_layers == 3
    assert len(teacher.bert.encoder.layer) == 6  # a copy: the teacher is untouched
    for kept, source in zip(student.bert.encoder.layer, kept_layers(6, 3)):
        for (_, a), (_, b) in zip(
            kept.named_parameters(), teacher.bert.encoder.layer[source].named_parameters()
        ):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")
    ids, mask = tokenizer.encode_batch(["Toy Story (1995)", "Heat (1995) Action Crime"])
    with torch.no_grad():
        vectors = student(torch.from_numpy(ids), torch.from_numpy(mask))
        reference = teacher(torch.from_numpy(ids), torch.from_numpy(mask))
    assert vectors.shape == reference.shape == (2, 384)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))
    assert not torch.allclose(vectors, reference, atol=1e-3)  # fewer layers, other vectors


def test_the_loss_is_one_minus_the_mean_cosine():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cosine_loss(a, b).item() == pytest.approx(1 - (1 + 2**-0.5) / 2)
    assert cosine_loss(b, b).item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    "bad", [{"layers": 0}, {"layers": 6}, {"steps": 0}, {"batch": 0}, {"lr": 0.0}]
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        DistillConfig(**bad)
