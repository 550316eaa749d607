"""Several machines pooled with llama.cpp's RPC backend, played on loopback: real bundles as
two workers (``--rpc-worker``) and a leader (``--rpc``), killed and refused as in life."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import PROMPT, Served, assert_one_line_error, run_exe
from runtime.llama import rpc

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A bundle lending its CPU on a loopback port."""

    def __init__(self, exe, *args: str):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(exe), "--rpc-worker", "--port", str(self.port), "-t", "1", *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.banner = self.proc.stderr.readline()
        assert "RPC worker" in self.banner, self.banner + self.proc.stderr.read()

    def hello(self, identity: dict) -> dict:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(rpc.HELLO + json.dumps(identity).encode() + b"\n")
            return json.loads(s.makefile("rb").readline())

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        return self.proc.stderr.read()


@pytest.fixture(scope="module")
def workers(bundle):
    pair = [Worker(bundle), Worker(bundle)]
    yield pair
    for w in pair:
        w.stop()


def get_health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def pooled(workers) -> str:
    return ",".join(w.endpoint for w in workers)


def greedy(exe, *args: str, n: int = 40) -> str:
    proc = run_exe(exe, "-p", PROMPT, "--raw", "-n", str(n), "--temp", "0", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_worker_binds_to_loopback_and_says_what_it_lends(workers):
    assert "127.0.0.1:" in workers[0].banner and "its CPU" in workers[0].banner
    assert "warning" not in workers[0].banner


def test_stories_split_over_two_workers_writes_what_one_process_writes(bundle, workers):
    alone = greedy(bundle)
    assert greedy(bundle, "--rpc", pooled(workers)) == alone


def test_info_shows_each_machine_and_its_layers(bundle, workers):
    proc = run_exe(bundle, "--info", "--json", "--rpc", pooled(workers), "--tensor-split", "1,2,1")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    spread = info["hardware"]["rpc"]
    layers = info["hardware"]["gpu"]["layer_count"] + 1
    assert [d.get("endpoint") for d in spread["devices"]] == [None, *(w.endpoint for w in workers)]
    counts = [d["layers"] for d in spread["devices"]]
    assert sum(counts) == layers and counts[1] > counts[0] and counts[1] > counts[2], counts
    text = run_exe(bundle, "--info", "--rpc", pooled(workers)).stdout
    assert "RPC " in text and "in proportion to free memory" in text and workers[1].endpoint in text


def test_the_chat_model_split_answers_as_one_process(chat_bundle, workers):
    # The workers were started from another bundle: no model of their own is needed.
    args = ("-p", "What is the capital of France?", "-n", "24", "--temp", "0")
    alone = run_exe(chat_bundle, *args, timeout=300)
    split = run_exe(chat_bundle, *args, "--rpc", pooled(workers), timeout=300)
    assert alone.returncode == 0 and split.returncode == 0, split.stderr
    assert split.stdout == alone.stdout and split.stdout.strip()


def test_a_worker_of_another_version_is_refused_by_both_sides(bundle, workers):
    reply = workers[0].hello({"llamabundle": "0.0.1", "llama_cpp": "0.3.1", "protocol": "7"})
    assert reply["identity"]["llamabundle"] != "0.0.1"
    # A fake worker of another version, answering the leader's greeting as ours would.
    fake = socket.create_server(("127.0.0.1", 0))
    port = fake.getsockname()[1]
    leader = subprocess.Popen([str(bundle), "-p", "hi", "--rpc", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    conn, _ = fake.accept()
    conn.recv(4096)
    other = {**reply["identity"], "llamabundle": "9.9.9"}
    conn.sendall(json.dumps({"identity": other, "busy": None}).encode() + b"\n")
    conn.close()
    fake.close()
    out, err = leader.communicate(timeout=60)
    proc = subprocess.CompletedProcess(leader.args, leader.returncode, out, err)
    assert_one_line_error(proc, "runs llamabundle 9.9.9", "same version")
    assert proc.returncode == 8


def test_an_unreachable_worker_is_one_line(bundle):
    proc = run_exe(bundle, "-p", "hi", "--rpc", f"127.0.0.1:{free_port()}")
    assert_one_line_error(proc, "cannot reach an RPC worker", "--rpc-worker")
    assert proc.returncode == 8


def test_a_worker_serves_one_leader_at_a_time(chat_bundle, bundle):
    w = Worker(bundle)
    leader = Served(chat_bundle, "--rpc", w.endpoint)
    try:
        leader.wait_ready(timeout=120)
        second = run_exe(bundle, "-p", "hi", "--rpc", w.endpoint)
        assert_one_line_error(second, "already serves another leader")
    finally:
        leader.stop()
        w.stop()


def test_a_worker_killed_mid_stream_fails_that_answer_and_the_leader_stays_up(chat_bundle, bundle):
    victim, survivor = Worker(bundle), Worker(bundle)
    leader = Served(chat_bundle, "--rpc", f"{victim.endpoint},{survivor.endpoint}")
    try:
        assert leader.wait_ready(timeout=120)["rpc"]["workers"] == [victim.endpoint, survivor.endpoint]
        body = {"prompt": "One, two, three,", "n_predict": 4000, "ignore_eos": True, "stream": True}
        request = urllib.request.Request(leader.url + "/completion", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        pieces, events, start = 0, [], time.monotonic()
        with urllib.request.urlopen(request, timeout=60) as stream:
            for line in stream:
                if not line.startswith(b"data: "):
                    continue
                events.append(json.loads(line[6:]))
                pieces += "content" in events[-1] and not events[-1].get("stop")
                if pieces == 5:
                    os.kill(victim.proc.pid, signal.SIGKILL)
        assert pieces >= 5 and time.monotonic() - start < 60
        assert "error" in events[-1] and victim.endpoint in events[-1]["error"]["message"], events[-1]
        # The leader is still up: it says what happened, and fails new answers in the same words.
        status, health = get_health(leader.url)
        assert status == 503 and victim.endpoint in health["error"]
        client = openai.OpenAI(base_url=leader.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as again:
            client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}])
        assert again.value.status_code == 502 and "went away" in str(again.value)
        assert leader.proc.poll() is None
    finally:
        leader.stop()
        victim.stop()
        survivor.stop()
