"""HTTP: /metrics, /healthz, /readyz and the read API (contract section 9).

A small threaded stdlib server in a daemon thread: the read API is a few Redis reads per
request and must not share the consumer loop's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from worker import metrics as _metrics  # noqa: F401  (registers the rfm_* families)
from worker import views
from worker.config import Settings
from worker.profiles import DEFAULT_TENANT, Profiles
from worker.store import Store

logger = logging.getLogger(__name__)


class Api:
    """What the routes need; `healthy` and `ready` come from the running worker."""

    def __init__(
        self,
        settings: Settings,
        profiles: Profiles,
        store: Store,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self.settings, self.profiles, self.store = settings, profiles, store
        self.healthy, self.ready = healthy, ready

    def handle(self, path: str) -> tuple[int, str, bytes]:
        url = urlsplit(path)
        parts = url.path.split("/")
        if url.path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if url.path == "/healthz":
            return self._status(self.healthy())
        if url.path == "/readyz":
            return self._status(self.ready())
        if len(parts) == 5 and parts[1:3] == ["v1", "customers"] and parts[3] and parts[4]:
            tenant, customer_id = unquote(parts[3]), unquote(parts[4])
            as_of = views.now_ms(self.settings, self.store)
            doc = views.lookup(self.store, self.profiles, tenant, customer_id, as_of)
            if doc is None:
                return _json(
                    404,
                    {
                        "error": "not_found",
                        "detail": f"no customer {customer_id!r} in tenant {tenant!r}",
                    },
                )
            return _json(200, doc)
        if url.path == "/v1/matrix":
            tenant = parse_qs(url.query).get("tenant", [DEFAULT_TENANT])[0]
            as_of = views.now_ms(self.settings, self.store)
            return _json(200, views.matrix(self.store, tenant, as_of))
        return _json(404, {"error": "not_found", "detail": f"no route {url.path}"})

    @staticmethod
    def _status(ok: bool) -> tuple[int, str, bytes]:
        return _json(200 if ok else 503, {"status": "ok" if ok else "unavailable"})


def _json(status: int, doc: Any) -> tuple[int, str, bytes]:
    return status, "application/json", orjson.dumps(doc)


def serve(api: Api, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Start serving in a daemon thread; `server.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                status, ctype, body = api.handle(self.path)
            except Exception as exc:  # a broken request must not kill the server thread
                logger.warning("GET %s failed: %s", self.path, exc)
                status, ctype, body = _json(503, {"error": "unavailable", "detail": str(exc)})
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    logger.info(
        "http on port %d: /metrics /healthz /readyz /v1/customers /v1/matrix",
        server.server_address[1],
    )
    return server
