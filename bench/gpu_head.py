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

from bench.gpu_common import VARIANTS, Clock, device_of, list_parity, time_variant, usable
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
    model = ScoringHead(HeadConfig(**head["config"]), text, id_rows)
    model.load_state_dict(head["state_dict"])
    with torch.inference_mode():
        return model.eval().catalog()


def sequence_encoder(head: dict) -> torch.nn.Module:
    model = ScoringHead(HeadConfig(**head["config"]), head["text_vectors"], head["id_rows"])
    model.load_state_dict(head["state_dict"])
    return model.eval().sequence


def bench_head(
    head: dict,
    device: str,
    sizes: list[int],
    batches: list[int],
    variants: list[str],
    clock: Clock,
    budget_s: float = 0.3,
    compile_batch: int = 256,
) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for size in sizes:
        catalog = catalog_matrix(head, size, generator)
        for batch in batches:
            take = torch.arange(batch) % head["rows"].shape[0]
            history, types = head["rows"][take], head["types"][take]
            reference = None
            for name in variants:
                if not usable(name, device, batch == compile_batch and size == sizes[0]):
                    continue
                what = f"head {size} {batch} {name}"
                if not clock.allows(what):
                    return rows_out
                variant = VARIANTS[name]
                dev = device_of(variant, device)
                items = catalog.to(dev)
                net = sequence_encoder(head).to(dev, variant.dtype)
                rows, kinds = history.to(dev), types.to(dev)

                def recommend(items=items, net=net, rows=rows, kinds=kinds, dtype=variant.dtype):
                    users = net(items[rows].to(dtype), kinds, last_only=True)[:, -1].float()
                    return users, *torch.topk(users @ items.T, TOP, dim=1)

                timing = time_variant(recommend, variant, dev, budget_s, clock, what)
                if timing is None:
                    continue
                seconds, (users, _, top) = timing
                found = top.cpu()
                if reference is None:  # the first variant, the CPU's, is the reference
                    reference = (users.float().cpu(), found)
                rows_out.append(
                    {
                        "part": "head", "items": size, "batch": batch, "variant": name,
                        "users_per_s": batch / seconds, "ms": 1000 * seconds,
                        # the dot products only: the Transformer is small beside them
                        "tflops": 2 * batch * items.numel() / seconds / 1e12,
                        "precision": variant.precision,
                        **list_parity(reference, found, catalog),
                    }
                )  # fmt: skip
                print(rows_out[-1], flush=True)
                del items, net
        del catalog
    return rows_out
