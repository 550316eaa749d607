"""Listening: the server's sockets on one or more addresses, its start and its clean stop
(Ctrl-C, SIGTERM), and opening the web chat once the model is ready."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import UsageError
from . import cors, routes
from .connections import Server
from .front import Limits
from .httpd import Handler, is_loopback
from .worker import Worker

PORT_TRIES = 20


def templates_dir() -> Path:
    base = getattr(sys, "_MEIPASS", None)
    return Path(base) / "templates" if base else Path(__file__).resolve().parents[2] / "templates"


def bind(host: str, port: int, explicit_port: bool, app, limits: Limits) -> Server:
    """Bind ``port``, or the next free one when the default port is taken."""
    tries = 1 if explicit_port or port == 0 else PORT_TRIES
    for candidate in range(port, port + tries):
        try:
            return Server((host, candidate), app, Handler, limits)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise UsageError(f"cannot listen on {host}:{candidate}: {e.strerror}") from None
    hint = "choose another with --port" if tries == 1 else f"ports {port}-{port + tries - 1} are all taken"
    raise UsageError(f"port {port} on {host} is already in use; {hint}")


def bind_all(hosts: list[str], port: int, explicit_port: bool, app, limits: Limits) -> list[Server]:
    """One server per address, all on the port the first one got."""
    servers: list[Server] = []
    try:
        for host in hosts:
            servers.append(bind(host, port, explicit_port or bool(servers), app, limits))
            port = servers[0].server_address[1]
    except UsageError:
        for server in servers:
            server.server_close()
        raise
    return servers


def parse_hosts(value: str) -> list[str]:
    hosts = [h.strip().strip("[]") for h in value.split(",")]
    if not all(hosts):
        raise UsageError(f"--host {value!r} has an empty address; write them as 127.0.0.1,::1")
    return list(dict.fromkeys(hosts))


def serve(bundle, settings, *, open_browser: bool, verbose: bool = False,
          cache_dir: str | None = None) -> int:  # fmt: skip
    hosts = parse_hosts(settings["host"])
    try:
        cors.check_origins(settings["cors_origins"])
    except ValueError as e:
        raise UsageError(f"--cors-origins: {e}") from None
    worker = Worker(bundle, settings, verbose=verbose, cache_dir=cache_dir)
    app = routes.App(bundle, settings, worker, verbose=verbose,
                     loopback_only=all(is_loopback(h) for h in hosts), static=_load_static())  # fmt: skip
    limits = Limits.from_settings(settings, settings["parallel"])
    servers = bind_all(hosts, settings["port"], settings.given("port"), app, limits)
    port = servers[0].server_address[1]
    host = hosts[0]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed:
        print(f"warning: listening on {', '.join(exposed)}, reachable from other machines"
              + ("" if app.api_key else "; set --api-key KEY to require a key"), file=sys.stderr)  # fmt: skip
    stop = threading.Event()

    def shutdown(*_):
        if not stop.is_set():
            stop.set()
            for server in servers:
                threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    also = "".join(f", also on {h}" for h in hosts[1:])
    print(f"Serving {bundle.model['name']} at {url} (OpenAI API: {url}v1{also}, Ctrl-C to stop)", flush=True)
    app.worker.start()
    threading.Thread(target=_after_load, args=(app, url, open_browser, shutdown), daemon=True).start()
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        servers[0].serve_forever(poll_interval=0.1)
    finally:
        app.cancel_all()
        app.worker.stop()
        for server in servers:
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
