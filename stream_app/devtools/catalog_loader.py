"""Encode a catalog through Triton ``item_embedder`` and store it for ``recommender``."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from serving.offline.data import Movie
from serving.trainer.encoders import served_versions
from stream_app.core.events import ItemUpsert
from stream_app.core.settings import Settings
from stream_app.devtools.redis_io import CatalogStore, redis_client
from stream_app.worker.triton_client import EMBED_BATCH, TritonRecommender

logger = logging.getLogger(__name__)


def load_catalog(settings: Settings, movies: list[Movie], force: bool = False) -> int:
    """Embed and store ``movies`` unless the catalog already holds them; returns its size.

    A new catalog keeps vectors of every encoder a recommender version in the model
    repository ranks with (each reads the one its head was trained on). A tool, not the
    worker: an encoder roll-out that begins meanwhile makes it fail, not retry."""
    store = CatalogStore(redis_client(settings), settings.redis.key_prefix)
    if not force and store.size() >= len(movies):
        logger.info("catalog already loaded items=%d", store.size())
        return store.size()
    versions = store.start_encoders(encoders_in_use(settings))
    items = [ItemUpsert(m.item_id, m.title, m.text, m.genres) for m in movies]
    started = time.monotonic()
    asyncio.run(_embed_and_store(settings, store, items, versions))
    logger.info(
        "catalog loaded items=%d encoders=%s seconds=%.1f",
        len(items),
        versions,
        time.monotonic() - started,
    )
    return store.size()


def encoders_in_use(settings: Settings) -> list[int]:
    """The item_embedder versions the recommender's versions (and candidate) rank with."""
    return sorted({v.encoder_version for v in served_versions(settings)}) or [1]


async def _embed_and_store(
    settings: Settings, store: CatalogStore, items: list[ItemUpsert], versions: list[int]
):
    triton = TritonRecommender(
        settings.triton.url,
        settings.triton.recommender_model,
        settings.triton.embedder_model,
        settings.triton.timeout_s * 4,  # cold model instances are slower on first requests
    )
    try:
        for start in range(0, len(items), EMBED_BATCH * 4):
            chunk = items[start : start + EMBED_BATCH * 4]
            texts = [i.text for i in chunk]
            vectors = {v: await triton.embed(texts, v) for v in versions}
            store.upsert(chunk, vectors, backfill=True)
            done = start + len(chunk)
            sys.stderr.write(f"\rcatalog: encoded {done}/{len(items)} items through Triton")
        sys.stderr.write("\n")
    finally:
        await triton.close()
