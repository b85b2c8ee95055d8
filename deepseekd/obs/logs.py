"""One JSON object per log line on stdout (journald keeps it); never request content."""

from __future__ import annotations

import json
import logging
import sys
import time

_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


ANCHOR_LOGGER = "deepseekd.audit.anchor"
"""The audit chain's head, written whatever the log level: an anchor outside the database
(journal, SIEM) that ``deepseekd audit verify --expect-head`` checks a chain against."""

QUIET_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy.engine", "sqlalchemy.pool", "alembic")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # our middleware logs requests
    # Database drivers log statements with their parameters (hashes, sealed blobs, TOTP
    # secrets) at DEBUG: never let them through, whatever the level.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    anchor_logger()


def anchor_logger() -> logging.Logger:
    """The logger of the audit anchor: INFO whatever the root level (an admin who sets
    obs.log_level = WARNING does not switch the anchor off)."""
    logger = logging.getLogger(ANCHOR_LOGGER)
    logger.setLevel(logging.INFO)
    return logger
