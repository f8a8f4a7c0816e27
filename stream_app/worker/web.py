"""HTTP endpoints on the worker's Faust web server: /metrics, /healthz, /readyz, read API."""

from __future__ import annotations

import json
import logging
import math
import time

import faust
import redis.asyncio as aioredis
from faust.web import Request, Response, View
from redis.exceptions import RedisError

from stream_app.core.access import RateLimiter, authorized, parse_tokens
from stream_app.core.errors import RedisUnavailable
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import WorkerSettings
from stream_app.worker.history import RedisHistory
from stream_app.worker.metrics import READ_API_REQUESTS, exposition
from stream_app.worker.triton_client import TritonRecommender

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp adds the charset

logger = logging.getLogger(__name__)


def register(
    app: faust.App,
    history: RedisHistory,
    redis_client: aioredis.Redis,
    recommender: TritonRecommender,
    pseudonym: Pseudonymiser,
    worker: WorkerSettings,
) -> None:
    """Probes and metrics answer anyone (Kubernetes and Prometheus call them); the read
    API only a configured bearer token, within its rate."""
    secret = worker.read_api_tokens
    tokens = parse_tokens(secret.get_secret_value()) if secret else ()
    limiter = RateLimiter(worker.read_api_rate_per_s, worker.read_api_burst, time.monotonic)
    if not tokens:
        logger.warning(
            "the read API is closed: no token in STREAMREC_WORKER__READ_API_TOKENS(_FILE)"
        )

    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        return self.bytes(exposition(), content_type=PROMETHEUS_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: View, request: Request) -> Response:
        checks = {
            # Partitions assigned: the broker answered and this worker is in its group.
            "kafka": bool(app.consumer.assignment()),
            "redis": await _redis_ok(redis_client),
            "triton": await recommender.ready(),
        }
        status = 200 if all(checks.values()) else 503
        return self.json({"ready": status == 200, "checks": checks}, status=status)

    @app.page("/recommendations/{user_id}")
    async def recommendations(self: View, request: Request, user_id: str) -> Response:
        # Before anything about the user: an unauthorised caller learns nothing of them.
        caller = authorized(request.headers.get("Authorization"), tokens)
        if caller is None:
            READ_API_REQUESTS.labels(outcome="unauthorized").inc()
            return self.json(
                {"error": "unauthorized", "detail": "a valid bearer token is required"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="streamrec"'},
            )
        wait_s = limiter.allow(caller)
        if wait_s:
            READ_API_REQUESTS.labels(outcome="rate_limited").inc()
            return self.json(
                {"error": "rate_limited", "detail": "too many requests for this token"},
                status=429,
                headers={"Retry-After": str(math.ceil(wait_s))},
            )
        READ_API_REQUESTS.labels(outcome="served").inc()
        try:
            body = await history.latest_recommendations(pseudonym(user_id))
        except RedisUnavailable:
            return self.json({"error": "unavailable", "detail": "Redis did not answer"}, status=503)
        if body is None:
            detail = (
                "no recommendations for this user: no interaction from them has been"
                " processed yet, or their history expired"
            )
            return self.json({"error": "not_found", "detail": detail}, status=404)
        # Redis keeps the list under the pseudonym, without caller ids; the caller knows
        # whom they asked for.
        return self.json({"user_id": user_id, **json.loads(body)})


async def _redis_ok(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
