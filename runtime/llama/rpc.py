"""Pooling machines with llama.cpp's own RPC backend: the leader's side.

A worker (``--rpc-worker``, ``rpc_worker.py``) serves its device through ggml's RPC
server; a leader (``--rpc host:port,...``) registers each worker's devices with ggml and
spreads the model's layers over its own device and theirs. ggml's protocol has no
authentication and trusts its peer, and its own version check covers only the wire
format, so before ggml connects the leader asks each worker who it is, in a line of our
own (``HELLO``): a worker of another llamabundle or llama.cpp version, or one that
already serves another leader, is refused in one line instead of failing inside ggml.

ggml aborts the process when a worker's socket fails; the module we build reports it
instead (bundler/ggml_source.py), and ``failed()`` tells the engine which worker went.
"""

from __future__ import annotations

import ctypes
import json
import socket
from dataclasses import dataclass

from .. import __version__
from ..errors import PeerError, UsageError
from . import backend

DEFAULT_PORT = 50052
HELLO = b"LLAMABUNDLE-RPC/1 "  # then one line of JSON; ggml's own first byte is 14 (HELLO)
PROTOCOL = "7"  # ggml's RPC_PROTO_MAJOR_VERSION in the llama.cpp this runtime is built from
TIMEOUT = 5.0


def identity() -> dict:
    """What two peers must share: our version, llama.cpp's, and ggml's wire format."""
    return {"llamabundle": __version__, "llama_cpp": backend.llama_version(), "protocol": PROTOCOL}


def describe(ident: dict) -> str:
    return f"llamabundle {ident.get('llamabundle', '?')} with llama-cpp-python {ident.get('llama_cpp', '?')}"


def parse_endpoints(text: str) -> list[str]:
    """``host:port,host:port`` (IPv6 as ``[::1]:50052``; the port defaults to 50052)."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        host, port = split_endpoint(item)
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not out:
        raise UsageError("--rpc needs at least one worker, as host:port (for example 192.168.1.20:50052)")
    if len(set(out)) != len(out):
        raise UsageError(f"--rpc names a worker twice: {text}")
    return out


def split_endpoint(item: str) -> tuple[str, int]:
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        host = host if bracket else ""
        port = rest.removeprefix(":")
    elif item.count(":") == 1:
        host, port = item.split(":")
    else:
        host, port = item, ""
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise UsageError(f"--rpc: {item!r} is not host:port (for example 192.168.1.20:{DEFAULT_PORT})")
    return host, number


def ask(endpoint: str, timeout: float = TIMEOUT) -> dict:
    """The worker's answer to our HELLO: {"identity", "busy"}; a PeerError in words when
    it cannot be reached or is not a llamabundle worker."""
    host, port = split_endpoint(endpoint)
    start = f"start one there with --rpc-worker --host <its address> --port {port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(HELLO + json.dumps(identity()).encode() + b"\n")
            answer = s.makefile("rb").readline(65536)
    except TimeoutError:
        why = f"the RPC worker at {endpoint} did not answer within {timeout:.0f} s"
        raise PeerError(f"{why}; {start}") from None
    except OSError as e:
        why = e.strerror or str(e)
        raise PeerError(f"cannot reach an RPC worker at {endpoint} ({why}); {start}") from None
    try:
        reply = json.loads(answer)
        assert isinstance(reply, dict) and isinstance(reply.get("identity"), dict)
    except (ValueError, AssertionError):
        why = "it did not answer our greeting"
        raise PeerError(f"{endpoint} is not a llamabundle RPC worker ({why})") from None
    return reply


def check(endpoint: str) -> dict:
    """Refuse, in one line, a worker this leader must not use; return its identity."""
    reply = ask(endpoint)
    theirs, ours = reply["identity"], identity()
    if theirs != ours:
        raise PeerError(
            f"the RPC worker at {endpoint} runs {describe(theirs)}, this bundle {describe(ours)}: "
            "llama.cpp's RPC protocol needs the same version on every machine; run the same bundle there"
        )
    if reply.get("busy"):
        raise PeerError(f"the RPC worker at {endpoint} already serves another leader ({reply['busy']}); "
                        "a worker serves one leader at a time")  # fmt: skip
    return theirs


@dataclass
class Worker:
    endpoint: str
    device: int  # ggml's device handle (a pointer)
    name: str  # ggml's device name, "RPC0[host:port]"
    description: str
    memory_free: int
    memory_total: int


def _fn(name: str, restype, *argtypes):
    lib = backend.ggml()
    backend.load_module("rpc")
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise PeerError("this bundle has no RPC module (libggml-rpc), so it cannot use --rpc; rebuild it")
    addr = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not addr:
        raise PeerError(f"this bundle's RPC module lacks {name}; rebuild it with this llamabundle")
    return ctypes.CFUNCTYPE(restype, *argtypes)(addr)


def connect(endpoints: list[str]) -> list[Worker]:
    """Check every worker, then register each one's devices with ggml (in ``endpoints``
    order, which is the order of --tensor-split's shares after the local one)."""
    for endpoint in endpoints:
        check(endpoint)
    lib = backend.ggml()
    add_server = _fn("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
    workers = []
    for endpoint in endpoints:
        reg = add_server(endpoint.encode())
        lib.ggml_backend_register(reg)
        for i in range(lib.ggml_backend_reg_dev_count(reg)):
            dev = lib.ggml_backend_reg_dev_get(reg, i)
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            name, about = lib.ggml_backend_dev_name(dev), lib.ggml_backend_dev_description(dev)
            workers.append(Worker(endpoint, dev, name.decode(), about.decode(), free.value, total.value))
    return workers


_failed: list = []  # llamabundle_rpc_failed, looked up once: it is asked after every step


def failed() -> str | None:
    """The worker whose connection failed since the model was loaded, or None."""
    if not _failed:
        _failed.append(_fn("llamabundle_rpc_failed", ctypes.c_char_p))
    out = _failed[0]()
    return out.decode() if out else None


def gone(endpoint: str) -> PeerError:
    return PeerError(
        f"the RPC worker at {endpoint} went away mid-answer; restart it, then restart this bundle "
        "(its share of the model was lost with it)"
    )
