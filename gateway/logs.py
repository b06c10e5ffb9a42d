"""Log set-up shared by redchat processes: every line names the process it came from."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


class _ProcessName(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.process_label = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.gw = self.process_label
        return True


def configure_logging(level: str, name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ProcessName(name))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(gw)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
