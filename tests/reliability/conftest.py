"""Fixtures of the reliability scenarios (the session stack: tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.reliability.scenarios import ensure
from tests.support import isolated


@pytest.fixture
def run_settings(stack_settings, catalog):
    """Settings of one scenario, its topics created."""
    return ensure(isolated(stack_settings))
