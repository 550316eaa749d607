"""Who may reach the server, and how: CORS from a page on another origin in a real browser
(allowed only with --cors-origins), several listen addresses, either API-key header, and
JSON errors for everything the server refuses."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

from conftest import Served

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
FETCH = """async ([url, mode]) => {
  const body = JSON.stringify({prompt: 'Once upon a time', max_tokens: 4, temperature: 0});
  const opts = mode === 'simple'
    ? {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body}
    : {method: 'POST', headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer k'}, body};
  try {
    const res = await fetch(url + '/v1/completions', opts);
    return {status: res.status, type: res.type, text: res.type === 'opaque' ? '' : await res.text()};
  } catch (e) { return {error: String(e)}; }
}"""


@pytest.fixture(scope="module")
def other_origin():
    """A page on another origin (another port of 127.0.0.1), as any web site would be."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = b"<!doctype html><title>elsewhere</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run ./install.sh (it installs Debian's chromium)")
    short_tmp = tempfile.mkdtemp(prefix="lb-", dir="/tmp")  # Chromium's socket paths must be short
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, env={**os.environ, "TMPDIR": short_tmp})
        yield b
        b.close()
    shutil.rmtree(short_tmp, ignore_errors=True)


def from_page(browser, page_url: str, server_url: str, mode: str) -> dict:
    page = browser.new_page()
    try:
        page.goto(page_url + "/")
        return page.evaluate(FETCH, [server_url, mode])
    finally:
        page.close()


def test_a_page_on_another_origin_is_refused_by_default(bundle, browser, other_origin):
    s = Served(bundle, "--api-key", "k")
    try:
        s.wait_ready()
        before = metrics_with_key(s.url)
        out = from_page(browser, other_origin, s.url, "cors")
        assert "error" in out and "Failed to fetch" in out["error"], out  # the preflight was refused
        simple = from_page(browser, other_origin, s.url, "simple")  # no preflight: it reaches us
        assert simple.get("type") == "opaque", simple
        after = metrics_with_key(s.url)
        # Neither drove the model: no token was generated, and both were answered 403.
        assert (
            after[("llamacpp:tokens_predicted_total", None)]
            == before[("llamacpp:tokens_predicted_total", None)]
        )
        assert after.get(("llamabundle:http_requests_total", "403"), 0) - before.get(
            ("llamabundle:http_requests_total", "403"), 0) == 2  # fmt: skip
    finally:
        s.stop()


def metrics_with_key(url: str) -> dict:
    """/metrics read with Prometheus' own parser (and the key, in Anthropic's header)."""
    from prometheus_client.parser import text_string_to_metric_families

    req = urllib.request.Request(url + "/metrics", headers={"X-Api-Key": "k"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, s.labels.get("code")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_a_named_origin_may_call_the_api(bundle, browser, other_origin):
    s = Served(bundle, "--api-key", "k", "--cors-origins", other_origin)
    try:
        s.wait_ready()
        out = from_page(browser, other_origin, s.url, "cors")
        assert out.get("status") == 200, out
        reply = json.loads(out["text"])
        assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 4
        # The preflight, answered by hand: the origin echoed, never "*" with credentials.
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": other_origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip
        r = conn.getresponse()
        r.read()
        assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == other_origin
        assert "POST" in r.getheader("Access-Control-Allow-Methods")
        assert r.getheader("Access-Control-Allow-Headers") == "authorization, content-type"
        conn.request("OPTIONS", "/v1/chat/completions", headers={"Origin": "http://evil.example"})
        r = conn.getresponse()
        assert r.status == 403 and r.getheader("Access-Control-Allow-Origin") is None
        assert "forbidden_origin" in r.read().decode()
    finally:
        s.stop()


def test_several_listen_addresses(bundle):
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 loopback; the test needs ::1")
    s = Served(bundle, "--host", "127.0.0.1,::1")
    try:
        s.wait_ready()
        for host in ("127.0.0.1", "[::1]"):
            with urllib.request.urlopen(f"http://{host}:{s.port}/health", timeout=10) as r:
                assert json.load(r)["status"] == "ok"
    finally:
        assert s.stop() == 0


def test_bad_listen_addresses_are_one_line_errors(bundle):
    from conftest import assert_one_line_error, run_exe

    assert_one_line_error(run_exe(bundle, "--server", "--host", "127.0.0.1,"), "empty address")
    assert_one_line_error(run_exe(bundle, "--server", "--cors-origins", "example.com"), "not an origin")
    assert_one_line_error(run_exe(bundle, "--server", "--host", "127.0.0.1,203.0.113.9", "--port", "0"),
                          "cannot listen on 203.0.113.9")  # fmt: skip


def test_every_refusal_is_json(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    for method, path, status in (("PUT", "/v1/chat/completions", 405), ("DELETE", "/health", 405),
                                 ("PATCH", "/nowhere", 404), ("TRACE", "/", 501),
                                 ("GET", "/v1/messages", 405)):  # fmt: skip
        conn.request(method, path)
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == status and r.getheader("Content-Type") == "application/json", (method, path)
        assert "message" in body["error"]
        conn.close()
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    raw.sendall(b"GARBAGE\r\n\r\n")
    data = b""
    while chunk := raw.recv(4096):  # the server closes after its answer
        data += chunk
    raw.close()
    answer = data.decode()
    assert answer.startswith("HTTP/1.") and " 400 " in answer.split("\r\n")[0] and '"error"' in answer
