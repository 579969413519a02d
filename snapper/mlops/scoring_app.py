"""The model server's ASGI app: MLflow's own scoring app (``mlflow models serve`` runs the same
``mlflow.pyfunc.scoring_server`` app) behind a request body limit, run by uvicorn.

Why not ``mlflow models serve`` itself: it has no body limit (a 200 MB request cost ~0.9 GB
of memory before the model saw it), and it starts uvicorn as a grandchild that a ``kill`` of
the command does not reach. ``snapper serve`` execs uvicorn on this module instead, so the
process the user started is the server and a signal stops it.

Configured through the environment (uvicorn imports the module in each worker):
:data:`MODEL_PATH_ENV` (a local pyfunc model folder) and :data:`MAX_BODY_ENV` (bytes).
"""

from __future__ import annotations

import json
import os
from typing import Any, Awaitable, Callable

from snapper.mlops import tracking  # noqa: F401  (first: it sets MLflow's telemetry defaults before the import)

from mlflow.pyfunc import scoring_server  # noqa: E402, I001

MODEL_PATH_ENV = "SNAPPER_SERVE_MODEL_PATH"
MAX_BODY_ENV = "SNAPPER_SERVE_MAX_BODY_BYTES"
DEFAULT_MAX_BODY = 32 << 20  # a few photos, base64-encoded, with all their boxes
# A refused body is read (and dropped) up to this many bytes before the 413 goes out: a client
# still sending when the server answers and closes gets a broken pipe instead of the 413 (seen
# with urllib under load). Past this, the answer goes out at once (nginx's lingering close, bounded).
DRAIN_MAX = 256 << 20

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """Answers 413 to a request whose body is over ``max_bytes``, before the app reads it: by
    its Content-Length, or while buffering a chunked body (never more than the limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                if length.isdigit() and int(length) <= DRAIN_MAX:
                    await _drain(receive)
                return await self._refuse(send, length.decode("latin-1"))
            return await self.app(scope, receive, send)
        body = bytearray()
        while True:  # chunked: buffered up to the limit, then replayed to the app
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_MAX - len(body))
                return await self._refuse(send, f"over {len(body)}")
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Send, size: str) -> None:
        cause = (f"request body of {size} bytes is over this server's limit of {self.max_bytes} bytes "
                 f"(snapper serve --max-body-mb); send fewer or smaller images per request")
        payload = json.dumps({"error_code": "REQUEST_TOO_LARGE", "message": cause, "cause": cause}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


async def _drain(receive: Receive, limit: int = DRAIN_MAX) -> None:
    """Reads and drops the rest of a request body (at most ``limit`` bytes), so that the client
    has finished sending when the refusal comes."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def build_app(model_path: str, max_bytes: int) -> ASGIApp:
    return BodyLimit(scoring_server.init(scoring_server.load_model_with_mlflow_config(model_path)), max_bytes)


def __getattr__(name: str) -> Any:
    """``app``, built on first access (uvicorn's ``module:app``), so that importing this module
    (tests, docs) does not load a model."""
    if name == "app":
        app = build_app(os.environ[MODEL_PATH_ENV], int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY)))
        globals()["app"] = app
        return app
    raise AttributeError(name)
