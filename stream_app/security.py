"""Kafka and Redis connection security, from settings to each client's own options.

One place maps ``STREAMREC_KAFKA__SECURITY_PROTOCOL`` & co. to Faust's credentials (the
worker), confluent-kafka's configuration (the tools) and redis-py's arguments, so the
worker, the commands and the Triton model connect the same way.
"""

from __future__ import annotations

import ssl

import faust

from stream_app.config import KafkaSettings, RedisSettings


def kafka_ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """A verifying TLS context for SSL and SASL_SSL (system CAs unless a CA file is set)."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_ca_file)
    if kafka.ssl_cert_file:
        context.load_cert_chain(kafka.ssl_cert_file, kafka.ssl_key_file)
    return context


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    context = kafka_ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context else None


def confluent_security(kafka: KafkaSettings) -> dict[str, str]:
    """librdkafka options for the same protocol, mechanism, credentials and files."""
    options = {"security.protocol": kafka.security_protocol.lower()}
    if kafka.security_protocol.startswith("SASL"):
        options |= {
            "sasl.mechanism": kafka.sasl_mechanism,
            "sasl.username": kafka.sasl_username,
            "sasl.password": kafka.sasl_password.get_secret_value(),
        }
    files = {
        "ssl.ca.location": kafka.ssl_ca_file,
        "ssl.certificate.location": kafka.ssl_cert_file,
        "ssl.key.location": kafka.ssl_key_file,
    }
    return options | {name: path for name, path in files.items() if path}


def redis_options(redis: RedisSettings) -> dict:
    """redis-py keyword arguments beyond the URL: ACL user, password, TLS CA."""
    options: dict = {
        "username": redis.username,
        "password": redis.password.get_secret_value() if redis.password else None,
    }
    if redis.url.startswith("rediss://") and redis.ssl_ca_file:
        options["ssl_ca_certs"] = redis.ssl_ca_file
    return options
