"""The OpenAI-compatible server inside a real built executable, driven by the
official `openai` client and by raw HTTP for the error paths."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import threading
import time

import openai
import pytest

from conftest import PROMPT, Served, run_exe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def raw(served, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload) if payload else None


def greedy(bundle, n):
    proc = run_exe(bundle, "-p", PROMPT, "-n", str(n), "--temp", "0")
    assert proc.returncode == 0
    return proc.stdout.rstrip("\n")


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list()] == ["stories260K"]
    status, health = raw(served, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["slots"] == 4  # --parallel defaults to 4


def test_chat_completion_matches_the_executable(bundle, client):
    r = client.chat.completions.create(model="stories260K", temperature=0, max_tokens=24,
                                       messages=[{"role": "user", "content": PROMPT}])  # fmt: skip
    assert r.choices[0].message.content == greedy(bundle, 24)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 24 and r.usage.total_tokens == r.usage.prompt_tokens + 24


def test_chat_streaming(bundle, client):
    stream = client.chat.completions.create(
        model="stories260K", temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": PROMPT}],
    )  # fmt: skip
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert len([p for p in pieces if p]) > 5  # it really streamed, piece by piece
    assert "".join(pieces) == greedy(bundle, 24)
    assert finish == "length" and usage.completion_tokens == 24


def test_completions_sync_and_stream(bundle, client):
    expected = greedy(bundle, 16)
    r = client.completions.create(model="stories260K", prompt=PROMPT, max_tokens=16, temperature=0)
    assert r.choices[0].text == expected and r.usage.completion_tokens == 16
    stream = client.completions.create(model="stories260K", prompt=PROMPT, max_tokens=16,
                                       temperature=0, stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in stream if c.choices) == expected


def test_stop_sequences_and_seed(client):
    r = client.completions.create(model="stories260K", prompt=PROMPT, max_tokens=40,
                                  temperature=0, stop=["Lily"])  # fmt: skip
    assert "Lily" not in r.choices[0].text and r.choices[0].finish_reason == "stop"
    kw = dict(model="stories260K", prompt=PROMPT, max_tokens=20, temperature=1.0, seed=7)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_embeddings(client):
    r = client.embeddings.create(model="stories260K", input=["a cat", "a dog", "a cat"])
    vecs = [d.embedding for d in r.data]
    assert len(vecs) == 3 and len(vecs[0]) == 64
    assert abs(sum(v * v for v in vecs[0]) - 1.0) < 1e-4  # unit length, as OpenAI's are
    assert vecs[0] == pytest.approx(vecs[2]) and vecs[0] != pytest.approx(vecs[1])
    floats = client.embeddings.create(model="stories260K", input="a cat", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vecs[0], abs=1e-6)


@pytest.mark.parametrize(
    "method, path, body, status, needle",
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/chat/completions", b"\xff\xfe", 400, "UTF-8"),
        ("POST", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ("POST", "/v1/completions", {"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
        ("POST", "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ("POST", "/v1/completions", {"prompt": "x", "n": 99}, 400, "'n' must be between 1 and 4"),
        ("POST", "/v1/completions", {"prompt": "x", "suffix": "y"}, 400, "'suffix' is not supported"),
        ("GET", "/v1/nothing", None, 404, "unknown route"),
        ("GET", "/v1/chat/completions", None, 405, "not allowed"),
    ],
)
def test_errors_have_openai_shape(served, method, path, body, status, needle):
    got, payload = raw(served, method, path, body)
    assert got == status
    assert needle in payload["error"]["message"] and "type" in payload["error"]


def test_errors_through_the_client(client):
    with pytest.raises(openai.BadRequestError, match="'audio' is not supported"):
        client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "x"}], audio={"voice": "a"}
        )
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="stories260K", prompt="Once upon a time " * 2000, max_tokens=4)


def test_oversized_body_is_413(served):
    status, payload = raw(served, "POST", "/v1/completions", b"x" * (9 * 2**20),
                          {"Content-Type": "application/json"})  # fmt: skip
    assert status == 413 and "larger than" in payload["error"]["message"]


def test_foreign_host_header_is_refused(served):
    status, payload = raw(served, "GET", "/health", headers={"Host": "attacker.example:80"})
    assert status == 403 and payload["error"]["code"] == "forbidden_host"
    assert raw(served, "GET", "/health", headers={"Host": f"localhost:{served.port}"})[0] == 200


def test_concurrent_clients_get_their_own_answers(bundle, served):
    prompts = ["Once upon a time", "One day", "The cat", "Lily and Tom"]
    c = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0, timeout=120)

    def ask(p, stream):
        kw = dict(model="stories260K", prompt=p, max_tokens=32, temperature=0)
        if stream:
            return "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **kw) if ch.choices)
        return c.completions.create(**kw).choices[0].text

    alone = {p: ask(p, False) for p in prompts}
    assert len(set(alone.values())) == len(prompts)
    results, threads = {}, []
    for i, p in enumerate(prompts * 2):
        t = threading.Thread(target=lambda i=i, p=p: results.__setitem__(i, (p, ask(p, i % 2 == 0))))
        threads.append(t)
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 8
    for p, text in results.values():
        assert text == alone[p]


def test_disconnect_stops_generation(served):
    _, before = raw(served, "GET", "/health")
    sock = socket.create_connection(("127.0.0.1", served.port))
    body = json.dumps({"prompt": PROMPT, "max_tokens": 1800, "temperature": 0, "stream": True})
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
    got = b""
    while b"data:" not in got:  # the headers may come first, on their own
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    sock.close()
    deadline = time.monotonic() + 30
    while True:
        _, health = raw(served, "GET", "/health")
        if not health["busy"] and not health["queued"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    generated = health["generated_tokens"] - before["generated_tokens"]
    assert 0 < generated < 300, generated  # far short of the 1800 asked for
    assert raw(served, "GET", "/health")[0] == 200


def test_api_key_and_public_host_warning(bundle):
    s = Served(bundle, "--host", "0.0.0.0", "--api-key", "sesame")
    try:
        s.wait_ready()
        status, payload = raw(s, "GET", "/v1/models")
        assert status == 401 and payload["error"]["code"] == "invalid_api_key"
        assert raw(s, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="sesame", max_retries=0)
        assert [m.id for m in ok.models.list()] == ["stories260K"]
    finally:
        assert s.stop() == 0
    warnings = [ln for ln in s.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0]


def test_busy_default_port_moves_to_the_next(bundle):
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8080))
        holder.listen()
    except OSError:
        pass  # something else already holds 8080: the premise holds all the same
    try:
        proc = subprocess.Popen([str(bundle), "--server"], stdout=-1, stderr=-1, text=True)
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert 8080 < port < 8100, line
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
        proc.stderr.close()
    finally:
        holder.close()


def test_sigterm_shuts_down_fast_and_frees_the_port(bundle):
    """SIGTERM stops the server at once, with status 0: a generation in progress (here
    4,000 tokens, many seconds of work) is cut off, not waited for, and the port is free."""
    s = Served(bundle, "--ctx-size", "4096")
    s.wait_ready()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    body = json.dumps({"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True})
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
    stream = sock.makefile("rb")
    pieces, finish = 0, None

    def read(until: int | None) -> None:
        nonlocal pieces, finish
        while until is None or pieces < until:
            line = stream.readline()
            if not line:  # the server went away
                return
            if line.startswith(b"data: {"):
                choice = json.loads(line[6:])["choices"][0]
                pieces += bool(choice["text"])
                finish = choice["finish_reason"] or finish

    read(5)  # the generation is under way
    assert pieces == 5
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=120) == 0  # a guard against a hang, not a measure of speed
    read(None)  # whatever the server sent before it exited, to the end of the stream
    stream.close()
    sock.close()
    assert finish != "length" and pieces < 4000, (finish, pieces)  # cut off, not run to the end
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", s.port))
    s.stop()
