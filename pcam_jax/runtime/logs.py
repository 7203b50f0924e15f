"""One logger: absl's, with the libraries' chatter filtered out.

Every binary logs through ``absl.logging``. ``quiet_library_logs()`` drops Orbax's INFO lines
(tens per checkpoint) from absl's handler; warnings and errors of every library stay.
"""

from __future__ import annotations

import logging as std_logging

from absl import logging


class _DropOrbaxInfo(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    """Drops Orbax's INFO lines from the absl log (idempotent); warnings stay."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
        handler.addFilter(_DropOrbaxInfo())
