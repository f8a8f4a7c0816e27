"""Roll a new item encoder out without downtime, and retire an old one.

``streamrec encoder roll VERSION`` (its directory already in the model repository:
``streamrec export --version N --adapter DIR``):

1. Triton serves ``item_embedder`` VERSION beside the versions it serves already.
2. VERSION joins the encoder set: every catalog write from then on carries a vector of it
   too (a worker that read the old set has its write refused, and encodes again).
3. Every item already in the catalog is encoded by VERSION through Triton; its vector is
   written only where the item's metadata is still what was encoded (an upsert in between
   wrote its own), so nothing stale lands and nothing is missed.
4. With every item encoded, ``{catalog}:encoder`` names VERSION: the trainer's next cycle
   trains a full head on those vectors and publishes it. Each recommender version reads
   only the vectors of the encoder its head was trained on, so until that head goes live
   the old one ranks with the old vectors: no ranking mixes two encoders.

``streamrec encoder retire VERSION`` then takes an encoder no served recommender version
ranks with out of the set and deletes its vectors.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from serving.trainer.online_gate import CandidateSlot
from serving.trainer.triton_control import load_latest
from serving.trainer.versions import ModelRepository, Version
from stream_app.core.catalog_log import REENCODE_LUA, meta_fields, parse_encoders, reencode_args
from stream_app.core.keys import CatalogKeys
from stream_app.core.settings import Settings
from stream_app.worker.triton_client import EMBED_BATCH, TritonRecommender

logger = logging.getLogger(__name__)

SCAN_COUNT = EMBED_BATCH * 4
"""Items per HSCAN page: one page is encoded and written at a time."""


@dataclass
class RollReport:
    version: int
    encoders: list[int]
    items: int = 0
    written: int = 0
    changed_meanwhile: int = 0  # upserted or removed during the fill: their writer did it
    seconds: float = 0.0


def roll_out(settings: Settings, client: redis.Redis, version: int) -> RollReport:
    """Steps 1-4 above; safe to run again after a crash (it encodes again what is there)."""
    keys = CatalogKeys(settings.redis.key_prefix)
    triton = settings.triton
    embedder_dir = Path(triton.model_repository) / triton.embedder_model
    if not (embedder_dir / str(version) / "model.onnx").exists():
        raise FileNotFoundError(
            f"{embedder_dir / str(version)} holds no model.onnx: export it first "
            f"(streamrec export --version {version} --adapter DIR)"
        )
    started = time.monotonic()
    current = parse_encoders(client.smembers(keys.encoders))
    if version in current and client.hlen(keys.vectors_of(version)) == client.hlen(keys.meta):
        # Already there (rolling back to the old encoder, say): its vectors may be ranked
        # with right now, so nothing is encoded again; training is pointed at it.
        client.set(keys.encoder, version)
        return RollReport(version, current, seconds=time.monotonic() - started)
    # item_embedder's version policy is "all": loading it again adds the new directory.
    load_latest(triton.url, triton.embedder_model, version)
    # An absent set means {1}: write it whole, so version 1 stays in it.
    client.sadd(keys.encoders, *sorted({*current, version}))
    report = RollReport(version, parse_encoders(client.smembers(keys.encoders)))
    asyncio.run(_fill(settings, client, keys, version, report))
    missing = int(client.hlen(keys.meta)) - int(client.hlen(keys.vectors_of(version)))
    if missing > 0:
        raise RuntimeError(f"{missing} items still lack a vector of encoder {version}")
    client.set(keys.encoder, version)
    report.seconds = time.monotonic() - started
    return report


async def _fill(
    settings: Settings, client: redis.Redis, keys: CatalogKeys, version: int, report: RollReport
) -> None:
    write = client.register_script(REENCODE_LUA)
    triton = TritonRecommender(
        settings.triton.url,
        settings.triton.recommender_model,
        settings.triton.embedder_model,
        settings.triton.timeout_s * 4,  # a new model instance is slower on first requests
    )
    total = int(client.hlen(keys.meta))
    try:
        cursor = 0
        while True:
            cursor, page = client.hscan(keys.meta, cursor, count=SCAN_COUNT)
            if page:
                item_ids = [i.decode() for i in page]
                metas = list(page.values())
                texts = [t or "" for t in meta_fields(metas, "text")]
                vectors = await triton.embed(texts, version)
                written = int(
                    write(
                        keys=[keys.meta, keys.vectors_of(version)],
                        args=reencode_args(item_ids, metas, vectors),
                    )
                )
                report.items += len(item_ids)
                report.written += written
                report.changed_meanwhile += len(item_ids) - written
                sys.stderr.write(f"\rencoder {version}: {report.items}/{total} items encoded")
            if cursor == 0:
                break
        sys.stderr.write("\n")
    finally:
        await triton.close()


def served_versions(settings: Settings) -> list[Version]:
    """Every recommender version in the repository, and the candidate on trial if any."""
    repository = ModelRepository.of(settings.triton)
    candidate = CandidateSlot(repository, settings.triton.candidate_model).current()
    return repository.versions() + ([candidate] if candidate else [])


def training_encoder(client: redis.Redis, keys: CatalogKeys, settings: Settings) -> int:
    """The encoder new heads train on: ``{catalog}:encoder``, else the live version's (as
    the trainer reads it)."""
    repository = ModelRepository.of(settings.triton)
    live = repository.live().encoder_version if repository.versions() else 1
    return int(client.get(keys.encoder) or live)


def retire(settings: Settings, client: redis.Redis, version: int) -> int:
    """Take ``version`` out of the encoder set and delete its vectors; returns how many
    vectors went. Refused while a recommender version (or the candidate on trial) ranks
    with it, or it is the one new heads train on."""
    keys = CatalogKeys(settings.redis.key_prefix)
    in_use = sorted(v.number for v in served_versions(settings) if v.encoder_version == version)
    if in_use:
        raise ValueError(f"recommender versions {in_use} rank with encoder {version}")
    if training_encoder(client, keys, settings) == version:
        raise ValueError(f"encoder {version} is the one new heads train on")
    current = parse_encoders(client.smembers(keys.encoders))
    if version not in current or current == [version]:
        raise ValueError(f"encoder {version} is not retirable from the set {current}")
    client.srem(keys.encoders, version)  # writers stop writing it before its hash goes
    vectors = int(client.hlen(keys.vectors_of(version)))
    client.delete(keys.vectors_of(version))
    return vectors
