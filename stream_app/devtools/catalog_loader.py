"""Encode a catalog through Triton ``item_embedder`` and store it for ``recommender``."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from serving.offline.data import Movie
from stream_app.core.events import ItemUpsert
from stream_app.core.settings import Settings
from stream_app.devtools.redis_io import CatalogStore, redis_client
from stream_app.worker.triton_client import EMBED_BATCH, TritonRecommender

logger = logging.getLogger(__name__)


def load_catalog(settings: Settings, movies: list[Movie], force: bool = False) -> int:
    """Embed and store ``movies`` unless the catalog already holds them; returns its size."""
    store = CatalogStore(redis_client(settings), settings.redis.key_prefix)
    if not force and store.size() >= len(movies):
        logger.info("catalog already loaded items=%d", store.size())
        return store.size()
    items = [ItemUpsert(m.item_id, m.title, m.text, m.genres) for m in movies]
    started = time.monotonic()
    asyncio.run(_embed_and_store(settings, store, items))
    logger.info("catalog loaded items=%d seconds=%.1f", len(items), time.monotonic() - started)
    return store.size()


async def _embed_and_store(settings: Settings, store: CatalogStore, items: list[ItemUpsert]):
    triton = TritonRecommender(
        settings.triton.url,
        settings.triton.recommender_model,
        settings.triton.embedder_model,
        settings.triton.timeout_s * 4,  # cold model instances are slower on first requests
    )
    try:
        for start in range(0, len(items), EMBED_BATCH * 4):
            chunk = items[start : start + EMBED_BATCH * 4]
            vectors = await triton.embed([i.text for i in chunk])
            store.upsert(chunk, vectors, backfill=True)
            done = start + len(chunk)
            sys.stderr.write(f"\rcatalog: encoded {done}/{len(items)} items through Triton")
        sys.stderr.write("\n")
    finally:
        await triton.close()
