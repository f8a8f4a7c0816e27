"""Configures StreamRec's loggers; every other module just calls getLogger(__name__).

Messages are written as ``key="value"`` pairs so they can be grepped and parsed. User ids
never appear raw in a log line.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
PACKAGES = ("stream_app", "serving")


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
