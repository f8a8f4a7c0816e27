"""The served head on a GPU: per request, the history's item vectors through the head's
Transformer (the last position only, as served), dot products with every catalog row, top-10.

The catalog matrix (the item tower over every row) is computed once, as the server holds it.
Catalogs larger than MovieLens repeat its text vectors with small noise and have no learned
id (scored by text alone, as new items are). Histories are MovieLens' validation users,
repeated to fill a batch. ``bf16`` runs the Transformer in bf16 and scores in fp32: the
catalog stays fp32, since bf16 dot products reorder near-equal items.
"""

from __future__ import annotations

import torch

from bench.gpu_common import ListPart
from serving.offline.head import HeadConfig, ScoringHead

TOP = 10


def load(path) -> dict:
    """``bench.gpu_payload``'s head.pt: config, weights, text vectors, id rows, histories."""
    return torch.load(path, weights_only=True)


def describe(head: dict | None) -> str:
    if head is None:
        return "not run (no payload)"
    c = head["config"]
    return (
        f"the served head ({c['layers']} layers, hidden {c['hidden']}, history"
        f" {c['max_len']}), {head['rows'].shape[0]} MovieLens validation histories"
    )


def catalog_matrix(head: dict, size: int, generator: torch.Generator) -> torch.Tensor:
    """[size + 1, hidden] fp32 on the CPU: the item tower over MovieLens' rows and, past them,
    noisy copies of their text vectors without a learned id."""
    text, id_rows = head["text_vectors"], head["id_rows"]
    extra = size + 1 - text.shape[0]
    if extra < 0:  # the histories read every MovieLens row
        raise ValueError(f"a catalog of {size} items is smaller than the head's")
    if extra > 0:
        copies = text[1:][torch.arange(extra) % (text.shape[0] - 1)]
        copies = copies + 0.02 * torch.randn(copies.shape, generator=generator)
        text = torch.cat([text, torch.nn.functional.normalize(copies, dim=1)])
        id_rows = torch.cat([id_rows, torch.zeros(extra, dtype=id_rows.dtype)])
    with torch.inference_mode():
        return scoring_head(head, text, id_rows).catalog()


def sequence_encoder(head: dict) -> torch.nn.Module:
    return scoring_head(head, head["text_vectors"], head["id_rows"]).sequence


def scoring_head(head: dict, text: torch.Tensor, id_rows: torch.Tensor) -> ScoringHead:
    model = ScoringHead(HeadConfig(**head["config"]), text, id_rows)
    model.load_state_dict(head["state_dict"])
    return model.eval()


def head_part(head: dict, sizes: list[int]) -> ListPart:
    generator = torch.Generator().manual_seed(0)

    def recommend(catalog, batch, variant, dev):
        take = torch.arange(batch) % head["rows"].shape[0]
        rows, kinds = head["rows"][take].to(dev), head["types"][take].to(dev)
        items, net = catalog.to(dev), sequence_encoder(head).to(dev, variant.dtype)

        def call():
            users = net(items[rows].to(variant.dtype), kinds, last_only=True)[:, -1].float()
            return users, *torch.topk(users @ items.T, TOP, dim=1)

        return call

    def figures(catalog, batch, seconds, variant):
        # the dot products only: the Transformer is small beside them
        return {"tflops": 2 * batch * catalog.numel() / seconds / 1e12}

    return ListPart(
        "head", lambda size: catalog_matrix(head, size, generator), recommend, figures, sizes[0]
    )
