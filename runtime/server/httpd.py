"""The executable's HTTP server: the web chat page and an OpenAI-compatible API.

Standard library only (``http.server``). Safe by default: it binds loopback,
refuses foreign Host headers there (DNS rebinding), limits body sizes, serves
the page under a strict Content-Security-Policy, and can require an API key.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import select
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UsageError
from . import api, routes
from .worker import Worker

MAX_BODY = 8 * 1024 * 1024
PORT_TRIES = 20
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
# The page's files, served by name from templates/ (its ES modules import each other by path).
STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def templates_dir() -> Path:
    base = getattr(sys, "_MEIPASS", None)
    return Path(base) / "templates" if base else Path(__file__).resolve().parents[2] / "templates"


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


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, app: routes.App):
        self.app = app
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llamabundle"
    sys_version = ""
    streaming = False

    def log_message(self, fmt, *args):
        if self.server.app.verbose:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        app: routes.App = self.server.app
        path = urlsplit(self.path).path
        try:
            if app.loopback_only and not is_loopback(host_name(self.headers.get("Host") or "")):
                raise api.ApiError(403, "this server only answers requests addressed to localhost",
                                   code="forbidden_host")  # fmt: skip
            if method in ("GET", "HEAD") and (name := static_name(path, app.static)):
                return self._static(name, head=method == "HEAD")
            handler = app.route(method, path)
            if app.api_key and path not in ("/health", "/props"):  # the page reads /props first
                auth = self.headers.get("Authorization") or ""
                if auth != f"Bearer {app.api_key}":
                    raise api.ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                                       "authentication_error", "invalid_api_key")  # fmt: skip
            body = self._body() if method == "POST" else {}
            handler(self, body)
        except api.ApiError as e:
            self.send_json(e.status, e.body(), close=e.status in (411, 413))
            if e.status == 413:
                self._drain()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug of ours: answer 500 in OpenAI's shape, keep serving
            print(f"error: {method} {path}: {type(e).__name__}: {e}", file=sys.stderr)
            if self.streaming:
                self.close_connection = True
            else:
                err = api.ApiError(500, f"internal error: {type(e).__name__}", "server_error")
                self.send_json(500, err.body(), close=True)

    def _body(self) -> dict:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise api.ApiError(411, "chunked request bodies are not supported; send Content-Length")
        length = self._content_length()
        if length < 0:
            raise api.ApiError(411, "a Content-Length header is required")
        if length > MAX_BODY:
            raise api.ApiError(413, self._too_large())
        return api.parse_body(self.rfile.read(length))

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

    def send_event(self, obj) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def client_gone(self) -> bool:
        """True once the client closed its side (checked while it waits for us)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def bind(host: str, port: int, explicit_port: bool, app) -> Server:
    """Bind ``port``, or the next free one when the default port is taken."""
    tries = 1 if explicit_port or port == 0 else PORT_TRIES
    for candidate in range(port, port + tries):
        try:
            return Server((host, candidate), app)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise UsageError(f"cannot listen on {host}:{candidate}: {e.strerror}") from None
    hint = "choose another with --port" if tries == 1 else f"ports {port}-{port + tries - 1} are all taken"
    raise UsageError(f"port {port} on {host} is already in use; {hint}")


def serve(bundle, settings, *, open_browser: bool, verbose: bool = False,
          cache_dir: str | None = None) -> int:  # fmt: skip
    host = settings["host"]
    worker = Worker(bundle, settings, verbose=verbose, cache_dir=cache_dir)
    app = routes.App(bundle, settings, worker, verbose=verbose, loopback_only=is_loopback(host),
                     static=_load_static())  # fmt: skip
    server = bind(host, settings["port"], settings.given("port"), app)
    port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    if not app.loopback_only:
        print(f"warning: listening on {host}, reachable from other machines"
              + ("" if app.api_key else "; set --api-key KEY to require a key"), file=sys.stderr)  # fmt: skip
    stop = threading.Event()

    def shutdown(*_):
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    print(f"Serving {bundle.model['name']} at {url} (OpenAI API: {url}v1, Ctrl-C to stop)", flush=True)
    app.worker.start()
    threading.Thread(target=_after_load, args=(app, url, open_browser, shutdown), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        app.cancel_all()
        app.worker.stop()
        server.server_close()
        app.worker._thread.join(timeout=0.8)
    if app.worker.state == "failed":
        print(f"error: {app.worker.error}", file=sys.stderr)
        return 4
    return 0


def _after_load(app, url: str, open_browser: bool, shutdown) -> None:
    app.worker.ready.wait()
    if app.worker.state == "failed":
        shutdown()
    elif open_browser and _has_desktop():
        import webbrowser

        webbrowser.open(url)


def _has_desktop() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _load_static() -> dict[str, bytes]:
    d = templates_dir()
    return {p.name: p.read_bytes() for p in d.glob("*") if p.is_file()} if d.is_dir() else {}
