"""The HTTP layer in-process: /health is 503 while the model loads, then 200."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from bundler import fuse
from runtime.bundle import payload
from runtime.server import httpd, routes
from runtime.server.connections import Server
from runtime.server.front import Limits
from runtime.server.worker import Worker
from runtime.settings import resolve


def _get(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=json.dumps(body) if body else None)
    r = conn.getresponse()
    data = json.loads(r.read())
    conn.close()
    return r.status, data


@pytest.mark.e2e  # loads stories260K into llama.cpp
def test_health_reports_loading_then_ready(dummy_stub, model, tmp_path):
    path = fuse.fuse(dummy_stub, model, tmp_path / "tales").path
    bundle = payload.read_bundle(str(path))
    settings = resolve({"port": 0}, environ={})
    worker = Worker(bundle, settings)  # not started yet: the model is still loading
    app = routes.App(bundle, settings, worker, verbose=False, loopback_only=True, static={})
    srv = Server(("127.0.0.1", 0), app, httpd.Handler, Limits())
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert _get(port, "GET", "/health") == (503, {"status": "loading"})
        status, body = _get(port, "POST", "/v1/completions", {"prompt": "x"})
        assert status == 503 and body["error"]["code"] == "model_loading"
        assert _get(port, "GET", "/props")[1]["n_ctx"] == 2048
        worker.start()
        assert worker.ready.wait(60) and worker.state == "ready"
        status, health = _get(port, "GET", "/health")
        assert status == 200 and health["status"] == "ok"
    finally:
        srv.shutdown()
        srv.server_close()
        worker.stop()


def test_host_header_parsing():
    assert httpd.host_name("localhost:8080") == "localhost"
    assert httpd.host_name("[::1]:8080") == "::1"
    assert httpd.is_loopback("127.0.0.2") and httpd.is_loopback("::1")
    assert httpd.is_loopback("app.localhost")
    assert not httpd.is_loopback("example.com") and not httpd.is_loopback("")
    assert not httpd.is_loopback("192.168.1.10")
