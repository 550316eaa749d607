"""``--rpc-worker``: lend this machine's CPU (or its GPU) to a leader on another machine.

ggml's RPC server does the work; it listens on a loopback port of its own, and this
front listens where the user asked. The front answers a leader's greeting
(``rpc.HELLO``: who we are, and whether a leader is already served) and passes every
other connection through to ggml untouched. ggml's server serves one leader at a time,
so does the front: a second one is told so in its greeting instead of waiting forever.

The protocol has no password and a worker runs whatever graph a leader sends, so the
worker binds to loopback unless told otherwise, and says plainly when it is exposed.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import threading
import time

from ..errors import PeerError, UsageError
from ..llama import backend, hardware, rpc

CHUNK = 1 << 20
WAIT_FOR_LEADER = 10.0  # seconds a connection waits for the one being served to close


def run(bundle, settings, *, verbose: bool = False) -> int:
    host = settings["host"]
    if "," in host:
        raise UsageError("--rpc-worker listens on one address: give --host one of them")
    port = settings["port"] if settings.given("port") else rpc.DEFAULT_PORT
    backend.init(verbose=verbose)
    device, what = _device(bundle, settings)
    threads = settings["threads"] or hardware.physical_cores()
    if not verbose:
        _quiet_stdout()
    inner = _start_ggml(device, threads)
    try:
        listener = socket.create_server((host, port), family=_family(host), backlog=16)
    except OSError as e:
        raise UsageError(f"--rpc-worker cannot listen on {host}:{port} ({e.strerror or e}); "
                         "choose another --port or --host") from None  # fmt: skip
    front = Front(inner, verbose)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"RPC worker ({rpc.describe(rpc.identity())}) lending {what} on {shown}; Ctrl+C stops it",
          file=sys.stderr, flush=True)  # fmt: skip
    if not _loopback(host):
        print(
            f"warning: anyone who can reach {shown} can use this worker: llama.cpp's RPC protocol has no "
            "password and runs whatever its leader sends. Use it only on a network you trust.",
            file=sys.stderr,
            flush=True,
        )
    with listener:
        while True:
            conn, addr = listener.accept()
            threading.Thread(target=front.serve, args=(conn, addr), daemon=True).start()


def _device(bundle, settings):
    """The device lent: the GPU the bundle would use here, else the CPU."""
    from ..llama.loading import choose_device

    lib = backend.ggml()
    plan = choose_device(bundle, settings)
    if plan.layers and plan.device:
        dev = lib.ggml_backend_dev_by_name(plan.device.encode())
        if dev:
            return dev, plan.name
    dev = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    free = hardware.memory()["available"]
    return dev, f"its CPU ({free / 2**30:.1f} GiB free)"


def _quiet_stdout() -> None:
    """ggml's RPC server prints its banner and a line per connection on the C runtime's
    stdout, which a worker does not otherwise use: what the worker says, it says on
    stderr in its own words (``-v`` keeps ggml's too). On Windows the mingw-built module
    prints through msvcrt, another C runtime than this Python's."""
    if os.name == "posix":
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return
    try:
        crt = ctypes.CDLL("msvcrt")
        crt._dup2(crt._open(b"NUL", os.O_WRONLY), 1)
    except (OSError, AttributeError):
        pass


def _start_ggml(device, threads: int) -> tuple[str, int]:
    """ggml's RPC server on a free loopback port, in a thread of its own (it never returns)."""
    start = rpc._fn("ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                    ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    devices = (ctypes.c_void_p * 1)(device)
    endpoint = f"127.0.0.1:{port}".encode()
    threading.Thread(target=start, args=(endpoint, None, threads, 1, devices), daemon=True).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            # A connection that sends nothing is one ggml drops at once, ready for the next.
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return "127.0.0.1", port
        except OSError:
            time.sleep(0.05)
    raise PeerError("llama.cpp's RPC server did not start; run with -v to see its log")


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class Front:
    """Greetings answered here; ggml's own connections passed through, one at a time."""

    def __init__(self, inner: tuple[str, int], verbose: bool = False):
        self.inner, self.verbose = inner, verbose
        self.free = threading.Condition()  # notified when the leader being served leaves
        self.leader: str | None = None  # the address of the connection being served

    def serve(self, conn: socket.socket, addr) -> None:
        peer = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        try:
            conn.settimeout(10)
            first = conn.recv(1, socket.MSG_PEEK)
            if first == rpc.HELLO[:1]:
                self._greet(conn, peer)
            elif first == b"\x0e":  # ggml's RPC_CMD_HELLO: a leader's ggml connecting
                self._pass_through(conn, peer)
        except OSError:
            pass
        finally:
            conn.close()

    def _greet(self, conn: socket.socket, peer: str) -> None:
        line = conn.makefile("rb").readline(65536)
        theirs = {}
        if line.startswith(rpc.HELLO):
            try:
                theirs = json.loads(line[len(rpc.HELLO) :])
            except ValueError:
                pass
        ours, busy = rpc.identity(), self.leader
        if theirs != ours:
            said = f"refused a leader at {peer}: it runs {rpc.describe(theirs)}, this worker "
            said += rpc.describe(ours)
        elif busy:
            said = f"refused a leader at {peer}: the leader at {busy} is being served"
        else:
            said = f"a leader at {peer} checked in"
        print(said, file=sys.stderr, flush=True)
        conn.sendall(json.dumps({"identity": ours, "busy": busy}).encode() + b"\n")

    def _pass_through(self, conn: socket.socket, peer: str) -> None:
        # ggml's client opens a new connection whenever it needs one again (while loading,
        # one per phase), and may do so before its last one has closed here: wait a little
        # for the leader being served to leave, then give up on this one.
        with self.free:
            if not self.free.wait_for(lambda: self.leader is None, timeout=WAIT_FOR_LEADER):
                return
            self.leader = peer
        counts = {}
        try:
            conn.settimeout(None)
            inner = socket.create_connection(self.inner)
            with inner:
                for s in (conn, inner):  # ggml's messages are small and waited for: no Nagle
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                back = threading.Thread(target=_pump, args=(inner, conn, counts, "out"), daemon=True)
                back.start()
                _pump(conn, inner, counts, "in")
                back.join()
        finally:
            with self.free:
                self.leader = None
                self.free.notify_all()
            if self.verbose:  # the protocol's cost, for bench/rows_rpc.py: replies are round trips
                print(f"connection from {peer} closed: {counts.get('out_sends', 0)} replies, "
                      f"{counts.get('in', 0)} bytes in, {counts.get('out', 0)} bytes out",
                      file=sys.stderr, flush=True)  # fmt: skip


def _pump(src: socket.socket, dst: socket.socket, counts: dict, name: str) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = sends = 0
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
            total, sends = total + n, sends + 1
    except OSError:
        pass
    counts[name], counts[f"{name}_sends"] = total, sends
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
