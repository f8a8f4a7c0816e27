"""The read API's access rules, pure: bearer tokens and the per-token rate."""

import pytest

from stream_app.core.access import RateLimiter, authorized, parse_tokens, token_id
from stream_app.core.errors import ConfigError
from stream_app.core.settings import load_settings

OLD, NEW = b"old-token-0123456789", b"new-token-9876543210"


def test_tokens_come_comma_or_line_separated_and_must_be_long():
    assert parse_tokens(" old-token-0123456789,\nnew-token-9876543210\n") == (OLD, NEW)
    with pytest.raises(ValueError, match="at least 16 characters"):
        parse_tokens("short")


def test_any_configured_token_opens_the_api_and_nothing_else_does():
    tokens = (OLD, NEW)  # during a rotation both work
    assert authorized("Bearer old-token-0123456789", tokens) == token_id(OLD)
    assert authorized("bearer  new-token-9876543210 ", tokens) == token_id(NEW)
    for header in (
        None,
        "",
        "Bearer",
        "Bearer old-token-012345678",  # a prefix
        "Basic old-token-0123456789",
        "old-token-0123456789",
    ):
        assert authorized(header, tokens) is None, header
    assert authorized("Bearer old-token-0123456789", ()) is None  # no token: closed
    assert token_id(OLD) not in OLD.decode() and len(token_id(OLD)) == 12


def test_each_token_has_its_own_bucket():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("a") == pytest.approx(0.5)  # empty: one more in 1/rate
    assert limiter.allow("b") == 0.0  # another token is not held back
    now[0] = 0.5
    assert limiter.allow("a") == 0.0 and limiter.allow("a") > 0


def test_read_api_tokens_come_from_a_mounted_file(monkeypatch, tmp_path):
    secret = tmp_path / "tokens"
    secret.write_text("old-token-0123456789\nnew-token-9876543210\n")
    monkeypatch.setenv("STREAMREC_WORKER__READ_API_TOKENS_FILE", str(secret))
    tokens = load_settings().worker.read_api_tokens
    assert parse_tokens(tokens.get_secret_value()) == (OLD, NEW)
    secret.write_text("short\n")
    with pytest.raises(ConfigError, match="16 characters"):
        load_settings()
