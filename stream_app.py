"""The streaming Function App: `POST /talk/stream` (and `GET /health`), from the same package
as `function_app.py`, chosen by the app setting `PYTHON_SCRIPT_FILE_NAME=stream_app.py`.

Importing `azurefunctions.extensions.http.fastapi` gives every HTTP function of an app
FastAPI's request and response types, the only way a Python function streams its answer;
the classic `func.HttpRequest` functions of the main app cannot live beside them, hence a
second app. It has no Durable functions: both apps share `host.json`'s task hub, and only
the main app may take its work.
"""

import azure.functions as func

from talk.hosting import configure_process
from talk.stream import bp as stream_bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(stream_bp)

configure_process()
