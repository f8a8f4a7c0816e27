"""The trained scoring head: a causal Transformer over a user's history of items.

Each item enters as its frozen BERT text vector through a small trainable adapter, plus,
optionally, a learned id embedding (zero for items never seen in training, so new items
still score by text alone). Position and event type (click or purchase) are added, a
causal Transformer reads the sequence, and the last position is the user vector. Scores
are dot products with every item's vector from the same adapter.

Sequences are left-padded (row 0) so the newest item always sits at the last position.
Model code only: data, training and export live beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    n_items: int
    """Catalog rows, padding row 0 not included."""
    text_dim: int = 384
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    use_text: bool = True
    """Item vectors from BERT text (the cold-start path)."""
    use_ids: bool = True
    """Add a learned per-item embedding for items seen in training."""
    id_dropout: float = 0.0
    """Training only: share of items whose learned id is hidden in each batch, so the
    model also learns to rank by text alone, as it must for new items."""
    id_scale: float = 1.0
    """Outside training: weight of the learned id in an item's vector. Dropout's rule for
    a part kept in training with probability ``1 - id_dropout``: at full weight, every
    known item carries a bonus that new items (text alone) never saw it carry in training,
    and new items sink below them. Chosen on validation (``bench/id_scale.py``)."""

    def to_dict(self) -> dict:
        return asdict(self)


class ItemTower(nn.Module):
    """Catalog rows -> item vectors in the head's space."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        if not (config.use_text or config.use_ids):
            raise ValueError("an item needs text, ids or both")
        self.adapter = (
            nn.Sequential(
                nn.Linear(config.text_dim, config.hidden),
                nn.GELU(),
                nn.Linear(config.hidden, config.hidden),
            )
            if config.use_text
            else None
        )
        self.ids = (
            nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
            if config.use_ids
            else None
        )
        self.id_scale = config.id_scale

    def forward(self, text_vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``text_vectors`` [n, text_dim] and ``rows`` [n] (id rows; 0 = no learned id)."""
        vectors = self.adapter(text_vectors) if self.adapter is not None else 0.0
        if self.ids is not None:
            scale = 1.0 if self.training else self.id_scale
            vectors = vectors + scale * self.ids(rows)
        return vectors


class CausalBlock(nn.Module):
    """Pre-norm self-attention + feed-forward; written out so it exports to ONNX plainly."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, attention_bias: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """[B, L, H] -> [B, L, H]; with ``last_only``, [B, 1, H]: only the last position
        attends and goes through the feed-forward (serving reads nothing else)."""
        batch, _, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if last_only:
            x, q, attention_bias = x[:, -1:], q[:, -1:], attention_bias[..., -1:, :]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], self.heads, hidden // self.heads).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        weights = q @ k.transpose(-2, -1) / math.sqrt(hidden // self.heads) + attention_bias
        attended = (self.dropout(weights.softmax(dim=-1)) @ v).transpose(1, 2)
        x = x + self.dropout(self.out(attended.reshape(batch, x.shape[1], hidden)))
        return x + self.dropout(self.ff(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """Item vectors of a history [B, L, H] + event types [B, L] -> user vectors [B, H]."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.position = nn.Embedding(config.max_len, config.hidden)
        self.event_type = nn.Embedding(3, config.hidden)  # 0 padding, 1 click, 2 purchase
        self.blocks = nn.ModuleList(
            CausalBlock(config.hidden, config.heads, config.dropout) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, item_vectors: torch.Tensor, event_types: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """Hidden state at every position [B, L, H]; the last one is the user vector. With
        ``last_only`` just that one [B, 1, H]: the last block then skips the work whose
        output only training reads (the served encoder: 38% fewer multiply-adds at L=50)."""
        length = item_vectors.shape[1]
        valid = event_types > 0
        positions = torch.arange(length, device=item_vectors.device)
        x = item_vectors * valid.unsqueeze(-1)
        x = x + self.position(positions + self.position.num_embeddings - length)
        x = self.dropout(x + self.event_type(event_types))
        # Position i sees valid positions j <= i, and always itself (so no row is empty).
        # (Comparisons, not eye/tril: ONNX Runtime has no boolean EyeLike or Trilu.)
        causal = positions[:, None] >= positions[None, :]
        allowed = causal & (valid.unsqueeze(1) | (positions[:, None] == positions[None, :]))
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~allowed, -1e9).unsqueeze(1)
        for number, block in enumerate(self.blocks, start=1):
            x = block(x, bias, last_only=last_only and number == len(self.blocks))
        return self.norm(x)


def _small_initial_weights(module: nn.Module) -> None:
    """BERT's and SASRec's initialisation, normal(0, 0.02) and zero biases. PyTorch's
    default draws embeddings from normal(0, 1): dot products of such vectors start in the
    hundreds, the softmax saturates, and training spends its first epochs shrinking them."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        nn.init.zeros_(module.weight[module.padding_idx])


class ScoringHead(nn.Module):
    def __init__(
        self,
        config: HeadConfig,
        text_vectors: torch.Tensor,
        id_rows: torch.Tensor | None = None,
    ) -> None:
        """``id_rows`` maps each catalog row to its learned-id row, 0 for items that have
        none (never seen in training): those are scored by their text alone, as new items
        are online. By default every row has its own id."""
        super().__init__()
        self.config = config
        # Frozen BERT vectors, one per catalog row (row 0: padding, zeros).
        self.register_buffer("text_vectors", text_vectors.float(), persistent=False)
        if id_rows is None:
            id_rows = torch.arange(text_vectors.shape[0])
        self.register_buffer("id_rows", id_rows.long(), persistent=False)
        self.items = ItemTower(config)
        self.sequence = SequenceEncoder(config)
        self.apply(_small_initial_weights)

    def catalog(self) -> torch.Tensor:
        """Vectors of every catalog row [n_items + 1, H] (row 0 is never recommended)."""
        rows = self.id_rows
        if self.training and self.config.id_dropout > 0:
            hidden = torch.rand(rows.shape, device=rows.device) < self.config.id_dropout
            rows = rows.masked_fill(hidden, 0)
        return self.items(self.text_vectors, rows)

    def hidden_states(
        self, catalog: torch.Tensor, rows: torch.Tensor, event_types: torch.Tensor
    ) -> torch.Tensor:
        return self.sequence(catalog[rows], event_types)

    def user_vectors(
        self, catalog: torch.Tensor, rows: torch.Tensor, event_types: torch.Tensor
    ) -> torch.Tensor:
        return self.hidden_states(catalog, rows, event_types)[:, -1]
