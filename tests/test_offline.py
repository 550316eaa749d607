"""No network at all: the executable and its web chat work in a network namespace
with no way out (`unshare -n`), and strace shows no socket but loopback."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import PROMPT, run_exe

pytestmark = pytest.mark.e2e
NET_CALLS = re.compile(r"\b(socket|connect|bind|sendto|sendmsg|recvfrom|getsockname|accept4?)\(")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed (install.sh installs it on Debian)")
    return path


@pytest.fixture(scope="module")
def netns_ok():
    _need("unshare")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")


def test_prompt_makes_no_network_call_at_all(bundle, tmp_path):
    log = tmp_path / "strace.txt"
    cmd = [_need("strace"), "-f", "-e", "trace=network", "-o", str(log), str(bundle), "-p", PROMPT,
           "-n", "8", "--temp", "0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip()
    calls = [ln for ln in log.read_text().splitlines() if NET_CALLS.search(ln)]
    assert calls == []


def test_prompt_in_a_namespace_without_network(bundle, netns_ok):
    expected = run_exe(bundle, "-p", PROMPT, "-n", "16", "--temp", "0").stdout
    proc = subprocess.run(["unshare", "-n", str(bundle), "-p", PROMPT, "-n", "16", "--temp", "0"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == expected, proc.stderr


SERVER_SCRIPT = r"""
set -e
ip link set lo up
strace -f -e trace=network -o "$LOG" "$BUNDLE" --server --port 8088 --temp 0 >/dev/null 2>&1 &
pid=$!
for i in $(seq 300); do curl -sf http://127.0.0.1:8088/health >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:8088/ | grep -c "<html"
curl -sf http://127.0.0.1:8088/chat.js | wc -c
curl -sf http://127.0.0.1:8088/v1/completions -H "Content-Type: application/json" \
     -d '{"prompt": "Once upon a time", "max_tokens": 8}'
pkill -TERM -f "^$BUNDLE --server"  # the server itself (strace then exits with it)
wait $pid
"""


def test_server_and_page_in_a_namespace_without_network(bundle, netns_ok, tmp_path):
    _need("strace"), _need("curl"), _need("ip")
    log = tmp_path / "strace.txt"
    proc = subprocess.run(["unshare", "-n", "bash", "-c", SERVER_SCRIPT], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={"LOG": str(log), "BUNDLE": str(bundle),
                                            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "1" and int(lines[1]) > 1000  # the page and its script were served
    assert '"text_completion"' in lines[2] and '"completion_tokens": 8' in lines[2]
    calls = [ln for ln in log.read_text().splitlines() if NET_CALLS.search(ln)]
    assert calls, "strace saw the server's own sockets"
    for call in calls:
        addrs = re.findall(r'inet_addr\("([\d.]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', call)
        for v4, v6 in addrs:
            assert (v4 or "").startswith("127.") or v6 in ("::1", ""), call
        assert "AF_INET6" not in call or "::1" in call or "socket(" in call, call
