"""The executable's HTTP plumbing: the web chat page and the APIs (OpenAI's,
llama-server's, Anthropic's), dispatched to ``routes.py``.

Standard library only (``http.server``). Safe by default: it binds loopback,
refuses foreign Host headers there (DNS rebinding) and requests from other sites'
pages (``cors.py``), limits body sizes, serves the page under a strict
Content-Security-Policy, can require an API key, and answers every error in JSON.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import sys
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from . import api, cors, routes

MAX_BODY = 8 * 1024 * 1024
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
# The page's files, served by name from templates/ (its ES modules import each other by path).
STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def static_name(path: str, files: dict) -> str | None:
    """The page file a GET path names: "/" is index.html, "/x.js" is x.js if the page has it.
    A build without the page still answers "/" (with a 404 that says so)."""
    if path == "/":
        return "index.html"
    name = path[1:]
    if "/" in name or os.path.splitext(name)[1] not in STATIC_TYPES or name not in files:
        return None
    return name


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a Host header: 'localhost:8080' -> 'localhost', '[::1]:80' -> '::1'."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Handler(BaseHTTPRequestHandler):
    """One request on a connection the front (``connections.py``) read the head of; the
    connection goes back to the front afterwards unless it is to close."""

    protocol_version = "HTTP/1.1"
    server_version = "llamabundle"
    sys_version = ""
    streaming = False
    unread_body = False

    def __init__(self, conn, addr, server, reader, writer):
        self.rfile, self.wfile = reader, writer
        super().__init__(conn.sock, addr, server)

    def setup(self):  # rfile and wfile are the front's (bytes it already read, timeouts)
        self.connection = self.request

    def handle(self):
        self.close_connection = True
        self.handle_one_request()

    def finish(self):
        pass

    def log_message(self, fmt, *args):
        if self.server.app.verbose:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_PUT(self):  # no route takes these: 405 or 404 in JSON, not Python's HTML 501
        self._dispatch("PUT")

    do_DELETE = do_PATCH = do_PUT

    def do_OPTIONS(self):
        """A CORS preflight: allowed only for the origins the user named (--cors-origins)."""
        origin = self.headers.get("Origin")
        self._cors_origin = None
        if origin is None:  # not a browser's preflight: say what the server takes
            return self._empty(204, {"Allow": "GET, HEAD, POST, OPTIONS"})
        if not self.server.app.cors.allows(origin):
            err = api.ApiError(403, f"web pages on {origin} may not call this server; start it with "
                               f"--cors-origins {origin} to allow them", code="forbidden_origin")  # fmt: skip
            return self.send_json(403, err.body())
        self._cors_origin = origin
        wanted = self.headers.get("Access-Control-Request-Headers") or ""
        self._empty(204, {"Access-Control-Allow-Methods": "GET, HEAD, POST, OPTIONS",
                          "Access-Control-Allow-Headers": cors.allowed_headers(wanted),
                          "Access-Control-Max-Age": "600"})  # fmt: skip

    def _empty(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_response(self, code, message=None):
        self.server.app.metrics.answered(code)
        super().send_response(code, message)

    def end_headers(self):
        if getattr(self, "_cors_origin", None):  # answers to a page the user allowed
            self.send_header("Access-Control-Allow-Origin", self._cors_origin)
            self.send_header("Vary", "Origin")
        super().end_headers()

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (a malformed request line, headers too long
        or too many, an unknown method) in the same JSON shape as every other error."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unreadable request line: answer in HTTP/1.1
            self.request_version = "HTTP/1.1"
        text = message or self.responses.get(code, ("error",))[0]
        try:
            self.send_json(code, api.ApiError(code, text).body(), close=True)
        except OSError:
            pass

    def _dispatch(self, method: str) -> None:
        app: routes.App = self.server.app
        path = urlsplit(self.path).path
        self._cors_origin = None
        try:
            host = self.headers.get("Host") or ""
            if app.loopback_only and not is_loopback(host_name(host)):
                raise api.ApiError(403, "this server only answers requests addressed to localhost",
                                   code="forbidden_host")  # fmt: skip
            self._check_origin(app, host)
            if method in ("GET", "HEAD") and (name := static_name(path, app.static)):
                return self._static(name, head=method == "HEAD")
            handler = app.route(method, path)
            if app.api_key and path not in ("/health", "/props"):  # the page reads /props first
                if not api.key_matches(self.headers, app.api_key):
                    raise api.ApiError(401, "a valid API key is required: send 'Authorization: Bearer "
                                       "KEY' or 'X-Api-Key: KEY'", "authentication_error",
                                       "invalid_api_key")  # fmt: skip
            body = self._body() if method == "POST" else {}
            handler(self, body)
        except api.ApiError as e:
            close = e.status in (408, 411, 413) or self.unread_body
            self.send_json(e.status, api.error_body(e, path), close=close)
            if e.status == 413:
                self._drain()
        except api.CLIENT_GONE:
            self.close_connection = True
        except Exception as e:  # a bug of ours: answer 500 in OpenAI's shape, keep serving
            print(f"error: {method} {path}: {type(e).__name__}: {e}", file=sys.stderr)
            if self.streaming:
                self.close_connection = True
            else:
                err = api.ApiError(500, f"internal error: {type(e).__name__}", "server_error")
                self.send_json(500, err.body(), close=True)

    def _check_origin(self, app, host: str) -> None:
        """A browser names the page behind a request in Origin. The page this server serves
        may call it, and so may pages of the origins the user allowed; any other site's page
        may not drive the local model (even with a "simple" request that needs no preflight)."""
        origin = self.headers.get("Origin")
        if origin is None or cors.same_origin(origin, host):
            return
        if not app.cors.allows(origin):
            raise api.ApiError(403, f"web pages on {origin} may not call this server; start it with "
                               f"--cors-origins {origin} to allow them", code="forbidden_origin")  # fmt: skip
        self._cors_origin = origin

    def _body(self) -> dict:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise api.ApiError(411, "chunked request bodies are not supported; send Content-Length")
        length = self._content_length()
        if length < 0:
            raise api.ApiError(411, "a Content-Length header is required")
        if length > MAX_BODY:
            raise api.ApiError(413, self._too_large())
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            self.unread_body = True
            raise api.ApiError(408, "the request body did not arrive in time") from None
        if len(data) < length:
            self.unread_body = True  # the rest may still come: nothing after it can be trusted
            raise api.ApiError(400, f"the request body ended after {len(data)} of its {length} bytes")
        return api.parse_body(data)

    def handle_expect_100(self) -> bool:
        """Refuse an oversized upload before the client sends it (curl asks first)."""
        if self._content_length() > MAX_BODY:
            self.send_json(413, api.ApiError(413, self._too_large()).body(), close=True)
            return False
        return super().handle_expect_100()

    def _content_length(self) -> int:
        try:
            return int(self.headers.get("Content-Length") or "-1")
        except ValueError:
            return -1

    def _too_large(self) -> str:
        return f"the request body is larger than {MAX_BODY // 2**20} MiB"

    def _drain(self) -> None:
        """Read (a bounded amount of) an unwanted body, so the client sees our answer
        instead of a reset connection while it is still sending."""
        left = min(self._content_length(), 8 * MAX_BODY)
        try:
            self.connection.settimeout(2)
            while left > 0:
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _static(self, name: str, head: bool) -> None:
        data = self.server.app.static.get(name)
        if data is None:
            raise api.ApiError(404, "the web chat page is not part of this build")
        self.send_response(200)
        self.send_header("Content-Type", f"{STATIC_TYPES[os.path.splitext(name)[1]]}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # -- used by routes --------------------------------------------------------------
    def send_json(self, status: int, obj, close: bool = False) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.streaming = True

    def send_event(self, obj, event: str | None = None) -> None:
        """One server-sent event; ``event`` names its type (Anthropic's and the Responses
        API's streams name every event; OpenAI's chat stream names none)."""
        data = obj if isinstance(obj, str) else json.dumps(obj)
        head = f"event: {event}\n" if event else ""
        self.wfile.write(f"{head}data: {data}\n\n".encode())
        self.wfile.flush()

    def client_gone(self) -> bool:
        """True once the client closed its side (checked while it waits for us)."""
        try:
            if hasattr(select, "poll"):  # select() cannot take descriptors past 1024
                p = select.poll()
                p.register(self.connection, select.POLLIN)
                readable = bool(p.poll(0))
            else:
                readable = bool(select.select([self.connection], [], [], 0)[0])
            if not readable:
                return False
            self.connection.setblocking(False)
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            finally:
                self.connection.setblocking(True)
        except BlockingIOError:
            return False
        except OSError:
            return True
