"""The Function App: `/health`, `/talk` and the Durable orchestration behind it.

Models and providers load on first use, not here, so a cold start that only answers
`/health` stays fast. `POST /talk/stream` is another app's (`stream_app.py`): a streaming
function takes FastAPI's types, which no function of this app could share with it.
"""

import azure.durable_functions as df
import azure.functions as func

from health.api import bp as health_bp
from talk.api import bp as talk_bp
from talk.hosting import configure_process
from talk.maintenance import bp as maintenance_bp
from talk.orchestration import bp as orchestration_bp

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(health_bp)
app.register_functions(talk_bp)
app.register_functions(orchestration_bp)
app.register_functions(maintenance_bp)

configure_process()
