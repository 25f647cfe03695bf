"""The Function App: `/health`, `/talk` and the Durable orchestration behind it.

Models and providers load on first use, not here, so a cold start that only answers
`/health` stays fast.
"""

import logging

import azure.durable_functions as df
import azure.functions as func

from health.api import bp as health_bp
from shared import telemetry
from shared.security.secrets import redact
from talk.api import bp as talk_bp
from talk.maintenance import bp as maintenance_bp
from talk.orchestration import bp as orchestration_bp

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(health_bp)
app.register_functions(talk_bp)
app.register_functions(orchestration_bp)
app.register_functions(maintenance_bp)

redact.install()
# The Azure SDK logs each storage call's URL (a blob's owner, conversation and request) at
# INFO, which the host would ship to Application Insights.
logging.getLogger("azure").setLevel(logging.WARNING)
telemetry.configure_from_environment()
