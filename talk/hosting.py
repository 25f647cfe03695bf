"""What each Function App's entry file does once per process, after registering its
functions: both apps (`function_app.py`, `stream_app.py`) log and trace alike."""

from __future__ import annotations

import logging

from shared import telemetry
from shared.security.secrets import redact


def configure_process() -> None:
    redact.install()
    # The Azure SDK logs each storage call's URL (a blob's owner, conversation and request) at
    # INFO, which the host would ship to Application Insights.
    logging.getLogger("azure").setLevel(logging.WARNING)
    telemetry.configure_from_environment()
