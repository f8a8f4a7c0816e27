"""The worker's clients for Kafka (through Faust) and Redis, from the settings."""

from __future__ import annotations

import asyncio

import faust
import redis.asyncio as aioredis
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError

from stream_app.core.client_options import kafka_ssl_context, redis_options
from stream_app.core.errors import ConfigError
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
    """The worker's asyncio client for the configured Redis or Redis Cluster, shared by its
    adapters (typed as a plain client: the cluster one has the same commands, pipelines
    and scripts, each script and transaction within one hash slot)."""
    options = redis_options(settings.redis)
    if settings.redis.cluster:
        return aioredis.RedisCluster.from_url(settings.redis.url, **options)  # type: ignore[return-value]
    return aioredis.Redis.from_url(settings.redis.url, **options)


async def check_kafka_login(kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
    """With SASL, log in to the first bootstrap broker that answers, once: wrong
    credentials then stop the worker at start with a clear ConfigError (through Faust they
    surface as the client's raw exception, or as endless retries). Brokers that do not
    answer are left to Faust's retries."""
    if not kafka.security_protocol.startswith("SASL"):
        return
    username, password = kafka.sasl_credentials()
    for server in kafka.bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            connection = await asyncio.wait_for(
                create_conn(
                    host,
                    int(port),
                    request_timeout_ms=int(timeout_s * 1000),
                    ssl_context=kafka_ssl_context(kafka),
                    security_protocol=kafka.security_protocol,
                    sasl_mechanism=kafka.sasl_mechanism,
                    sasl_plain_username=username,
                    sasl_plain_password=password,
                ),
                timeout_s,
            )
        except (OSError, TimeoutError, KafkaConnectionError):
            continue  # not reachable: the next broker, or Faust's retries
        except Exception as exc:  # noqa: BLE001  (whatever the SASL exchange raised)
            reason = f"{type(exc).__name__}: {exc}".replace(password, "***")[:300]
            raise ConfigError(
                f"Kafka at {server} refused the {kafka.sasl_mechanism} login of user"
                f" {username!r} over {kafka.security_protocol} ({reason}); check"
                " STREAMREC_KAFKA__SASL_USERNAME and STREAMREC_KAFKA__SASL_PASSWORD(_FILE)"
            ) from None
        connection.close()
        return
