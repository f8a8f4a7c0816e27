"""The worker's clients for Kafka (through Faust) and Redis, from the settings."""

from __future__ import annotations

import faust
import redis.asyncio as aioredis

from stream_app.core.client_options import kafka_ssl_context, redis_options
from stream_app.core.settings import KafkaSettings, Settings


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """Faust's credentials for the configured security protocol (None: plaintext)."""
    context = kafka_ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        username, password = kafka.sasl_credentials()
        return faust.SASLCredentials(
            username=username,
            password=password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context else None


def redis_client(settings: Settings) -> aioredis.Redis:
    """The worker's asyncio client for the configured Redis, shared by its adapters."""
    return aioredis.Redis.from_url(settings.redis.url, **redis_options(settings.redis))
