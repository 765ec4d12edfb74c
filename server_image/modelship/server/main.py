"""The server's entry point: `serve` (the default) or `fetch`, with the settings of config.py."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from modelship.server.config import ConfigError, load_settings
from modelship.server.fetch_command import fetch_command, report_failure


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        report_failure(exc.termination_log, f"bad settings: {exc}")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.command == "fetch":
        return fetch_command(settings)
    # Imported here, not above: `fetch` must not load the serving stack (see fetch_command).
    from modelship.server import serving

    return serving.run(settings)
