"""StreamRec's exceptions, and where each one lands.

StreamRecError
├── InvalidEvent          -> dead-letter topic, with ``reason`` as the DLQ reason code
├── ConfigError           -> start-up fails, message names the setting (exit code 2)
├── StackError            -> the local launcher cannot start or reach a server (exit code 3)
└── DependencyError       -> retried with backoff; the batch is not committed
    ├── RedisUnavailable
    └── InferenceUnavailable
"""

from __future__ import annotations


class StreamRecError(Exception):
    """Base of every error StreamRec raises on purpose."""


class InvalidEvent(StreamRecError):
    """An input event that can never be processed: it goes to the DLQ with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConfigError(StreamRecError):
    """Bad configuration, found at start-up."""


class StackError(StreamRecError):
    """The local launcher could not start or reach one of its servers."""


class DependencyError(StreamRecError):
    """A server we depend on failed; the work is retried, never dropped."""


class RedisUnavailable(DependencyError):
    """Redis did not answer or refused the command."""


class InferenceUnavailable(DependencyError):
    """Triton did not answer in time or returned an error for the whole request."""
