"""RPC pooling without ggml: endpoints, shares, and the layer split llama.cpp will make."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from runtime.errors import PeerError, UsageError
from runtime.llama import pool, rpc


def test_endpoints_default_the_port_and_keep_ipv6_brackets():
    assert rpc.parse_endpoints("10.0.0.2, 10.0.0.3:6000,[::1]:7000") == [
        "10.0.0.2:50052",
        "10.0.0.3:6000",
        "[::1]:7000",
    ]


@pytest.mark.parametrize("bad", ["", ",", "host:port", "h:0", "h:70000", "a:1,a:1", "[::1", ":5"])
def test_bad_endpoints_are_one_usage_error(bad):
    with pytest.raises(UsageError, match="--rpc"):
        rpc.parse_endpoints(bad)


def test_layers_follow_llama_cpp_rule():
    # 8 layers + output over 2 devices, all offloaded, equal shares: 5 and 4 (upper_bound)
    assert pool.layers_per_device(8, 9, [1, 1]) == [0, 5, 4]
    # the first 3 kept on the CPU, the rest dealt 1:2
    assert pool.layers_per_device(8, 6, [1, 2]) == [3, 2, 4]


def test_plan_by_shares_keeps_the_local_share_on_the_cpu():
    split = pool.plan(8, [1, 1, 1], local_is_cpu=True, why="test")
    assert split.layers == [3, 3, 3] and split.n_gpu_layers == 6 and split.tensor_split == [1, 1]
    assert sum(split.layers) == 9


def test_every_worker_named_gets_a_layer_even_when_this_machine_is_huge():
    split = pool.plan(4, [1000, 1, 1], local_is_cpu=True, why="test")
    assert split.layers[1] >= 1 and split.layers[2] >= 1 and sum(split.layers) == 5


def test_a_local_gpu_takes_the_local_share_after_the_workers():
    split = pool.plan(8, [2, 1, 1], local_is_cpu=False, why="test")
    assert split.n_gpu_layers == 9 and split.tensor_split == [1, 1, 2]
    assert split.layers[0] == 0 and split.layers[3] == max(split.layers)


@pytest.mark.parametrize("bad", ["1,1", "1,x,1", "0,0,0", "1,-1,1"])
def test_bad_shares_name_what_they_need(bad):
    with pytest.raises(UsageError, match="--tensor-split needs 3 shares"):
        pool.parse_shares(bad, 3)


def _one_answer(reply: bytes):
    """A listener that answers one connection with ``reply`` and closes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(reply)
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{srv.getsockname()[1]}"


def test_a_worker_of_another_version_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(rpc, "identity", lambda: {"llamabundle": "1", "llama_cpp": "0.3.36", "protocol": "7"})
    theirs = {"llamabundle": "0.0.9", "llama_cpp": "0.3.30", "protocol": "7"}
    endpoint = _one_answer(json.dumps({"identity": theirs, "busy": None}).encode() + b"\n")
    with pytest.raises(PeerError) as e:
        rpc.check(endpoint)
    assert "runs llamabundle 0.0.9 with llama-cpp-python 0.3.30" in str(e.value)
    assert "\n" not in str(e.value)


def test_something_else_on_the_port_is_not_a_worker(monkeypatch):
    monkeypatch.setattr(rpc, "identity", lambda: {"llamabundle": "1"})
    endpoint = _one_answer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(PeerError, match="is not a llamabundle RPC worker"):
        rpc.check(endpoint)


def test_nothing_listening_says_how_to_start_a_worker(monkeypatch):
    monkeypatch.setattr(rpc, "identity", lambda: {"llamabundle": "1"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerError, match="--rpc-worker"):
        rpc.check(f"127.0.0.1:{port}")
