"""The HTTP server of the Api (worker/web/api.py): `serve` starts it in daemon threads;
the read API is a few Redis reads per request and must not share the consumer loop's
thread.

What a request may cost the server is bounded: GET only (any other method is a 405 and
no body is ever read), one request per connection, the request line and headers within
MAX_REQUEST_LINE / MAX_HEAD bytes and received within the request timeout (a client that
sends nothing, or drips its headers, is disconnected).

Slow clients cannot starve the probes (slowloris): one thread accepts every connection and
reads the request heads of all of them at once (a selector), so a connection costs a thread
only once its whole head is in. At most `max_pending` connections may be that far behind;
one more drops the oldest of them. A whole request is then served in a thread of its own
from one of two budgets, chosen by its path: `max_probe_connections` for /metrics, /healthz
and /readyz, `max_connections` for everything else; a full budget answers 503 at once.
Neither half-open connections nor a flood of the read API take anything from the probes.

That is why this module overrides parts of the standard library's http.server and
socketserver (serve_forever, shutdown_request, the handler's handle_one_request): their
thread-per-connection design gives a thread to every client before its request is in.

Waitress does not replace it: it reads heads asynchronously too, but times only inactivity
(in whole seconds), so a head dripped slowly is never cut, and at its connection_limit it
stops accepting. Under the tests' flood of 1,200 connections dripping their heads it answered
no probe (0 of 6; limit 336 or 1,000), this server all of them (236, p99 18 ms). It also
answers its own errors in plain text, has no request line (414) or header count limit, reads
a body (after a 100 Continue) before a 405 can be sent, and keeps HTTP/1.1 connections
alive. A port of their own for the probes would need a listener that survives the same
attack, and the read API would still need these limits.
"""

from __future__ import annotations

import errno
import io
import logging
import selectors
import socket
import socketserver
import threading
import time
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from worker.errors import ConfigError
from worker.web.api import OPEN, Api, Response, error

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 2.0  # seconds to receive a whole request head, and to send the response
MAX_CONNECTIONS = 64  # read API requests (any path but the probes') served at once, else 503
MAX_PROBE_CONNECTIONS = 16  # /metrics, /healthz, /readyz requests served at once, else 503
MAX_PENDING = 256  # connections whose request head is still arriving; more drop the oldest
BACKLOG = 1024  # connections the kernel queues for accept() (the stdlib's default is 5)
ACCEPTS = 16  # accepted per round of the serving loop at most: far fewer than MAX_PENDING
REPORT_EVERY = 10.0  # seconds at least between two warnings about connections turned away
MAX_REQUEST_LINE = 8 * 1024  # bytes; a 200-character id is at most 2,400 once encoded
MAX_HEAD = 32 * 1024  # bytes of request line and headers together
LINGER = 1.0  # seconds, at most, to drain what a client still sends after the response
MAX_DRAIN = 64 * 1024  # bytes drained at most; then the connection is reset

_PROBES = frozenset(path.encode() for path in OPEN)  # served from their own budget
_BUSY_BODY = b'{"error":"unavailable","detail":"too many open connections"}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Pending:
    """A connection whose request head is still arriving (read without blocking)."""

    __slots__ = ("address", "deadline", "ended", "head", "sock")

    def __init__(self, sock: socket.socket, address: Any, deadline: float) -> None:
        self.sock, self.address, self.deadline = sock, address, deadline
        self.head = bytearray()
        self.ended = False  # the empty line that ends the headers has arrived

    def receive(self) -> bool | None:
        """Read what has arrived: True when the request can be served (the head is whole,
        or too long to ever be: a 414 or 431), False while more is awaited, None when the
        client closed before a whole request line (nothing to answer)."""
        try:
            chunk = self.sock.recv(MAX_HEAD - len(self.head))
        except BlockingIOError:
            return False
        except OSError:  # reset by the client
            return None
        if not chunk:  # the client is done sending: what came is the request, as the parser
            # reads the end of the stream as the end of the headers
            return True if b"\n" in self.head else None
        seen = len(self.head)
        self.head += chunk
        # the head ends at its first empty line, where http.client.parse_headers stops
        self.ended = any(self.head.find(end, max(0, seen - 2)) >= 0 for end in (b"\n\r\n", b"\n\n"))
        too_long = len(self.head) >= MAX_HEAD or (
            len(self.head) > MAX_REQUEST_LINE and self.head.find(b"\n", 0, MAX_REQUEST_LINE) < 0
        )
        return self.ended or too_long

    def is_probe(self) -> bool:
        """Whether the request line asks for /metrics, /healthz or /readyz."""
        words = bytes(self.head).partition(b"\n")[0].split()
        if len(words) < 2:
            return False
        path = words[1].partition(b"?")[0]
        if path.startswith(b"//"):  # as BaseHTTPRequestHandler.parse_request reads it
            path = b"/" + path.lstrip(b"/")
        return path in _PROBES


def _refuse(sock: socket.socket) -> None:
    """Answer 503 without waiting for anything, and close."""
    try:
        sock.setblocking(False)
        sock.send(_BUSY)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


class _Server(HTTPServer):
    """Accepts connections and reads their request heads in the serving thread, all at once
    (a selector); serves each whole request in a thread of its own, within its budget."""

    request_queue_size = BACKLOG

    def __init__(
        self,
        address: Any,
        family: socket.AddressFamily,
        api: Api,
        timeout: float,
        *,
        max_connections: int,
        max_probe_connections: int,
        max_pending: int,
    ) -> None:
        self.address_family = family
        self.api, self.request_timeout, self.max_pending = api, timeout, max_pending
        self._slots = threading.BoundedSemaphore(max_connections)
        self._probe_slots = threading.BoundedSemaphore(max_probe_connections)
        self._pending: dict[socket.socket, _Pending] = {}  # oldest first
        self._selector: selectors.BaseSelector | None = None
        self._turned_away: Counter[str] = Counter()  # since the last warning
        self._report_at = 0.0  # when the next warning may be logged
        self._stop, self._stopped = threading.Event(), threading.Event()
        super().__init__(address, _Handler)
        self.socket.setblocking(False)  # accept() never waits for a client that went away

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn): not needed, maybe slow
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Until shutdown(): accept, read request heads, hand whole requests to threads."""
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as self._selector:
                self._selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    wait = poll_interval
                    if self._pending:  # the oldest has the nearest deadline
                        oldest = next(iter(self._pending.values()))
                        wait = min(wait, max(0.0, oldest.deadline - time.monotonic()))
                    for key, _ in self._selector.select(wait):
                        pending: _Pending | None = key.data  # None: the listening socket
                        try:
                            if pending is None:
                                self._accept()
                            elif self._pending.get(pending.sock) is pending:  # not dropped
                                self._receive(pending)
                        except Exception:  # never the end of the serving thread
                            logger.exception("http: serving a connection failed")
                    self._expire()
                    self._report()
        finally:
            for pending in self._pending.values():
                pending.sock.close()
            self._pending.clear()
            self._selector = None
            self._report_at = 0.0
            self._report()  # what was turned away since the last warning
            self._stop.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever and wait for it (requests in their threads run to their end)."""
        self._stop.set()
        self._stopped.wait()

    def _accept(self) -> None:
        assert self._selector is not None
        for _ in range(ACCEPTS):
            try:
                sock, address = self.get_request()
            except OSError:  # none left, or out of file descriptors: try again later
                return
            sock.setblocking(False)
            if len(self._pending) >= self.max_pending:
                # the oldest makes room: clients that hold connections open without sending
                # a request cannot lock out one that sends it at once (kubelet, Prometheus);
                # a new one is read in the next round, before ACCEPTS newer could push it out
                oldest = next(iter(self._pending.values()))
                self._forget(oldest)
                self._turn_away(oldest.sock, "connections without a whole request (the oldest)")
            pending = _Pending(sock, address, time.monotonic() + self.request_timeout)
            self._pending[sock] = pending
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _receive(self, pending: _Pending) -> None:
        ready = pending.receive()
        if ready is False:
            return
        self._forget(pending)
        if ready is None:
            pending.sock.close()
            return
        probe = pending.is_probe()
        slots = self._probe_slots if probe else self._slots
        if not slots.acquire(blocking=False):
            self._turn_away(pending.sock, f"{'probe' if probe else 'read API'} requests")
            return
        try:
            threading.Thread(target=self._serve, args=(pending, slots), daemon=True).start()
        except Exception:  # no thread to be had: this request only is lost
            slots.release()
            self.handle_error(pending.sock, pending.address)
            pending.sock.close()

    def _expire(self) -> None:
        """Close the connections whose request head did not arrive in time, oldest first.

        Each is read once more first: a process starved of CPU (a loaded node) may come back
        past a deadline with whole requests waiting that its last select did not report; they
        are served. Closing one with unread bytes would also reset it rather than end it."""
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._receive(oldest)
            if self._pending.get(oldest.sock) is oldest:  # still no whole request head
                logger.debug("http: no whole request from %s in time, closing", oldest.address)
                self._forget(oldest)
                oldest.sock.close()

    def _turn_away(self, sock: socket.socket, what: str) -> None:
        _refuse(sock)
        self._turned_away[what] += 1

    def _report(self) -> None:
        """A warning about the connections turned away, one per REPORT_EVERY at most (not
        one per connection: under attack that would be thousands a second)."""
        if self._turned_away and (now := time.monotonic()) >= self._report_at:
            logger.warning(
                "http: too many open connections; answered 503 to %s (since the last warning)",
                ", ".join(f"{n} {what}" for what, n in self._turned_away.items()),
            )
            self._turned_away.clear()
            self._report_at = now + REPORT_EVERY

    def _forget(self, pending: _Pending) -> None:
        assert self._selector is not None
        self._selector.unregister(pending.sock)
        del self._pending[pending.sock]

    def _serve(self, pending: _Pending, slots: threading.BoundedSemaphore) -> None:
        """One request, in its own thread (ThreadingMixIn.process_request_thread's part)."""
        try:
            pending.sock.setblocking(True)
            head = bytes(pending.head)
            exhausted = len(head) >= MAX_HEAD and not pending.ended
            _Handler(pending.sock, pending.address, self, head=head, exhausted=exhausted)
        except Exception:
            self.handle_error(pending.sock, pending.address)
        finally:
            self.shutdown_request(pending.sock)
            slots.release()

    def shutdown_request(self, request: Any) -> None:
        """A lingering close: after the response, read and discard what the client still
        sends (an unread body, the rest of a too long head), within LINGER and MAX_DRAIN,
        so that it reads the response instead of a connection reset."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + min(LINGER, self.request_timeout)
            drained = 0
            while drained < MAX_DRAIN and (remaining := deadline - time.monotonic()) > 0:
                request.settimeout(remaining)
                chunk = request.recv(16 * 1024)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:  # the timeout included
            pass
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away mid-response: no traceback on stderr
        logger.debug("http: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One request whose head the server has read already: `head` (nothing: no request),
    and whether it was cut at MAX_HEAD before its end (`exhausted`: a 431)."""

    server: _Server

    def __init__(
        self,
        request: Any,
        client_address: Any,
        server: _Server,
        *,
        head: bytes = b"",
        exhausted: bool = False,
    ) -> None:
        self._head, self._exhausted = head, exhausted
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # to send the response
        self.rfile.close()
        self.rfile = io.BytesIO(self._head)

    def handle_one_request(self) -> None:
        """The stdlib's, with tighter limits, GET only, and no request body ever read."""
        self.close_connection = True  # HTTP/1.0: one request per connection
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline.endswith(b"\n"):
                return  # the client closed the connection mid-line (or before it)
            if not self.parse_request():
                return  # parse_request sent the error
            if self._exhausted:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                return
            if self.command != "GET":
                self._send(
                    error(405, "method_not_allowed", "only GET is served"),
                    (("Allow", "GET"),),
                )
                return
            if self._has_body():
                self._send(error(400, "bad_request", "request bodies are not accepted"))
                return
            self._get()
            self.wfile.flush()
        except TimeoutError as exc:
            self.log_error("response timed out: %r", exc)

    def _has_body(self) -> bool:
        if "Transfer-Encoding" in self.headers:
            return True
        length = self.headers.get_all("Content-Length") or ["0"]
        return any(value.strip() != "0" for value in length)

    def _get(self) -> None:
        authorization = self.headers.get_all("Authorization") or []
        try:
            response = self.server.api.handle(
                self.path,
                # two Authorization headers are not a credential
                authorization[0] if len(authorization) == 1 else ("" if authorization else None),
            )
        except Exception as exc:  # a broken request must not kill the server thread
            logger.warning("GET %s failed: %s", self.path[:300], exc)
            response = error(503, "unavailable", str(exc))
        self._send(response)

    def _send(self, response: Response, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in (*response.headers, *extra):
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's errors (bad request line, headers too large) as JSON."""
        status = HTTPStatus(code)
        self.log_error("code %d, message %s", code, message or status.phrase)
        self.close_connection = True
        name = status.phrase.lower().replace(" ", "_").replace("-", "_")
        self._send(error(code, name, message or status.phrase))

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http: " + format, *args)


def serve(
    api: Api,
    port: int,
    host: str = "0.0.0.0",  # noqa: S104  (RFM_HTTP_HOST's default)
    *,
    timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    max_probe_connections: int = MAX_PROBE_CONNECTIONS,
    max_pending: int = MAX_PENDING,
) -> HTTPServer:
    """Start serving in a daemon thread; `server.shutdown()` stops it.

    A host that does not resolve or is not an address of this machine is a ConfigError
    naming RFM_HTTP_HOST; other bind errors (the port in use) are OSError.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"RFM_HTTP_HOST={host}: {exc.strerror}") from None
    try:
        server = _Server(
            address,
            family,
            api,
            timeout,
            max_connections=max_connections,
            max_probe_connections=max_probe_connections,
            max_pending=max_pending,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"RFM_HTTP_HOST={host}: {exc.strerror}") from None
        raise
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    logger.info(
        "http on %s port %d: / /openapi.json /metrics /healthz /readyz /v1/customers "
        "/v1/matrix /v1/segments (%s)",
        host,
        server.server_address[1],
        "bearer token required for /v1/*" if api.settings.http_token else "no authentication",
    )
    return server
