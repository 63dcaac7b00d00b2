"""Logging of tscd: every module logs to a child of the ``tscd`` logger; nothing prints.

The library only creates loggers. Programs (the CLI, the benchmarks) call
:func:`configure_logging` once, which writes ``tscd.*`` records as plain lines — up to INFO on
stdout, warnings and errors on stderr — at the level named by ``TSCD_LOG_LEVEL`` (``DEBUG``,
``INFO`` (default), ``WARNING``, ...). At ``DEBUG`` the ops log which backend runs each call.
"""
from __future__ import annotations

import logging
import os
import sys

_ROOT = "tscd"


class _ConsoleHandler(logging.StreamHandler):
    """INFO and below to ``sys.stdout``, the rest to ``sys.stderr``, as they are at the time of the
    record (so redirection and test capture work)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        super().emit(record)


def configure_logging(level: str | None = None) -> logging.Logger:
    """Attach one console handler to the ``tscd`` logger (idempotent) and set its level.

    ``level`` defaults to ``TSCD_LOG_LEVEL`` or ``INFO``; an unknown name raises ``ValueError``.
    """
    name = (level or os.environ.get("TSCD_LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"TSCD_LOG_LEVEL must be a logging level name (DEBUG, INFO, WARNING, ERROR), got {name!r}")
    logger = logging.getLogger(_ROOT)
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(numeric)
    return logger
