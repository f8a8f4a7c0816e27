"""How the worker stops without committing work it has not finished."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import NoReturn, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def finish_even_if_cancelled(work: Awaitable[T], events: int) -> T:
    """Run a batch's processing; if the agent is cancelled half way (shutdown), finish it.

    Faust acknowledges a batch when its block ends, even by cancellation, and commits
    what was acknowledged on the way out: a batch cut short would be committed undone.
    So the batch runs shielded to its end; how long that may take is bounded by
    ``GracefulWorker``'s SIGTERM deadline, which exits without any commit.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        logger.info("stopping: finishing the in-flight batch events=%d", events)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            exit_uncommitted("cancelled twice in the middle of a batch")
        logger.info("in-flight batch finished; it is committed on the way out")
        raise


def exit_uncommitted(why: str) -> NoReturn:
    """End the process now, committing nothing: the next worker reads the batch again."""
    logger.error("%s: exiting without committing", why)
    logging.shutdown()
    os._exit(75)  # EX_TEMPFAIL
