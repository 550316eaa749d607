"""Bundle authoring on real built executables: baked settings, inspect, verify,
compression, quantization and splitting."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PROMPT, Served, assert_one_line_error, run_cli, run_exe
from runtime.bundle import payload

pytestmark = pytest.mark.e2e

SHA = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"


def build(stub, model, out, *args, check=True):
    return run_cli(["build", str(model), "-o", str(out), "--runtime", str(stub), *args], check=check)


def greedy(exe, n=24, **kw):
    proc = run_exe(exe, "-p", PROMPT, "-n", str(n), "--temp", "0", **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def expected(bundle):
    return greedy(bundle)


# -- baked settings -----------------------------------------------------------------
def test_baked_settings_from_config_and_flags(stub, model, tmp_path):
    config = tmp_path / "bundle.toml"
    config.write_text('name = "Tales"\nsystem = "Tell a story."\ntemp = 0.0\ntop-k = 5\n'
                      'greeting = "Hello, reader!"\nport = 9123\n')  # fmt: skip
    out = tmp_path / "tales"
    build(stub, model, out, "--config", str(config), "--top-k", "7", "--repeat-penalty", "1.1")
    info = json.loads(run_exe(out, "--info", "--json").stdout)
    s = info["settings"]
    assert s["name"] == {"value": "Tales", "source": "baked"}
    assert s["top_k"] == {"value": 7, "source": "baked"}  # the flag beat the file
    assert s["repeat_penalty"]["value"] == 1.1 and s["port"]["value"] == 9123
    assert s["temp"] == {"value": 0.0, "source": "baked"}
    env = json.loads(
        run_exe(
            out, "--info", "--json", "--top-k", "3", env={"LLAMABUNDLE_TEMP": "0.7", "LLAMABUNDLE_TOP_K": "9"}
        ).stdout
    )
    assert env["settings"]["temp"] == {"value": 0.7, "source": "env"}  # env beats baked
    assert env["settings"]["top_k"] == {"value": 3, "source": "flag"}  # flag beats env
    chat = run_exe(out, "--cli", "-n", "4", input="/bye\n")
    assert chat.stdout.startswith("Hello, reader!\n") and "Chatting with Tales" in chat.stderr
    srv = Served(out)
    try:
        srv.wait_ready()
        import urllib.request

        with urllib.request.urlopen(srv.url + "/v1/models") as r:
            assert json.load(r)["data"][0]["id"] == "Tales"
        with urllib.request.urlopen(srv.url + "/props") as r:
            props = json.load(r)
        assert props["greeting"] == "Hello, reader!" and props["system_prompt"] == "Tell a story."
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "config, flags, needles",
    [
        ("tempreature = 0.5\n", [], ["unknown setting 'tempreature'", "bundle.toml"]),
        ("top_p = 3\n", [], ["top_p must be between 0 and 1"]),
        ("", ["--top-p", "3"], ["top_p", "command line"]),
        ("", ["--ctx-size", "-5"], ["ctx_size"]),
        ("temp = [\n", [], ["not valid TOML"]),
        ("", ["--chat-template", "no-such-format"], ["chat_template", "chatml"]),
        ("[server]\nport = 1\n", [], ["[server]"]),
    ],
)
def test_bad_settings_fail_the_build(stub, model, tmp_path, config, flags, needles):
    cfg = tmp_path / "bundle.toml"
    cfg.write_text(config)
    proc = build(stub, model, tmp_path / "out", "--config", str(cfg), *flags, check=False)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "out").exists()


def test_bad_template_file_names_the_line(stub, model, tmp_path):
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    proc = build(stub, model, tmp_path / "out", "--chat-template", str(tmpl), check=False)
    assert_one_line_error(proc, "chat template", "line 2")


def test_baked_chat_format_is_used(stub, model, tmp_path):
    out = tmp_path / "chatml"
    build(stub, model, out, "--chat-template", "chatml")
    info = run_exe(out, "--info")
    assert "format 'chatml' (baked)" in info.stdout
    chat = run_exe(out, "--cli", "--temp", "0", "-n", "8", input="hi\n/bye\n")
    assert chat.returncode == 0 and "no chat template" not in chat.stderr


# -- inspect and verify --------------------------------------------------------------
def test_inspect_a_gguf(model):
    info = json.loads(run_cli(["inspect", str(model), "--json"], check=True).stdout)
    g = info["gguf"]
    assert info["kind"] == "gguf" and info["sha256"] == SHA and info["size"] == model.stat().st_size
    assert g["architecture"] == "llama" and g["parameters"] == 292_800 and g["file_type"] == "F32"
    assert g["context_length"] == 2048 and g["chat_template"] is False
    human = run_cli(["inspect", str(model)], check=True).stdout
    assert "292,800" in human and SHA in human


def test_inspect_a_bundle(bundle, stub):
    info = json.loads(run_cli(["inspect", str(bundle), "--json"], check=True).stdout)
    assert info["kind"] == "bundle" and info["model"]["sha256"] == SHA
    assert info["model"]["compressed"] is False and info["stub"]["os"] == "linux"
    assert info["build"]["llamabundle"] and info["settings"] == {}


def test_verify_passes_on_an_intact_bundle(bundle):
    ok = run_cli(["verify", str(bundle)], check=True)
    assert "OK, every byte matches" in ok.stdout
    own = run_exe(bundle, "--verify")
    assert own.returncode == 0 and "OK, every byte matches" in own.stdout


def test_verify_catches_one_flipped_byte_anywhere_in_the_model(bundle, tmp_path):
    m = payload.read_bundle(str(bundle)).model
    rng = random.Random(1234)
    spots = [m["header_size"] + 1, m["size"] // 2, m["size"] - 1]
    spots += [rng.randrange(m["size"]) for _ in range(3)]
    for spot in spots:
        bad = tmp_path / "tales"
        shutil.copy(bundle, bad)
        with open(bad, "r+b") as f:
            f.seek(m["offset"] + spot)
            byte = f.read(1)
            f.seek(m["offset"] + spot)
            f.write(bytes([byte[0] ^ 0x01]))
        proc = run_cli(["verify", str(bad)])
        assert proc.returncode != 0 and "damaged" in proc.stderr, (spot, proc.stderr)
        own = run_exe(bad, "--verify")
        assert own.returncode != 0 and "Traceback" not in own.stderr, (spot, own.stderr)


def test_verify_a_truncated_bundle(bundle, tmp_path):
    bad = tmp_path / "tales"
    bad.write_bytes(bundle.read_bytes()[:-5000])
    assert_one_line_error(run_cli(["verify", str(bad)]), "cut short")


# -- compression ----------------------------------------------------------------------
def test_compressed_bundle_unpacks_once_into_the_cache(stub, model, tmp_path, expected):
    out = tmp_path / "talesz"
    build(stub, model, out, "--compress", "--compress-level", "3")
    m = payload.read_bundle(str(out)).model
    assert m["storage"] == "zstd" and m["stored_size"] < m["size"]
    assert greedy(out) == expected
    cached = Path(os.environ["LLAMABUNDLE_CACHE"]) / "models" / f"{SHA}.gguf"
    assert cached.exists() and cached.stat().st_size == m["size"]
    before = cached.stat().st_mtime_ns
    assert greedy(out) == expected  # a later start uses the cache as it is
    assert cached.stat().st_mtime_ns == before
    elsewhere = tmp_path / "elsewhere"
    proc = run_exe(out, "-p", PROMPT, "-n", "24", "--temp", "0", "--cache-dir", str(elsewhere))
    assert proc.stdout == expected and (elsewhere / "models" / f"{SHA}.gguf").exists()
    assert "OK" in run_cli(["verify", str(out)], check=True).stdout


def test_two_first_starts_at_once(stub, model, tmp_path, expected):
    out = tmp_path / "talesz"
    build(stub, model, out, "--compress")
    cache = tmp_path / "c"
    cmd = [str(out), "-p", PROMPT, "-n", "24", "--temp", "0", "--cache-dir", str(cache)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0 and stdout == expected, stderr
    assert sorted(x.name for x in (cache / "models").iterdir() if not x.name.endswith(".lock")) == [
        f"{SHA}.gguf"
    ]


# -- quantization ----------------------------------------------------------------------
def test_quantize_command(model, tmp_path):
    out = tmp_path / "q8.gguf"
    proc = run_cli(["quantize", str(model), str(out), "--type", "q8_0"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(run_cli(["inspect", str(out), "--json"], check=True).stdout)
    assert info["gguf"]["file_type"] == "Q8_0" and "Q8_0" in info["gguf"]["tensor_types"]
    assert out.stat().st_size < model.stat().st_size


def test_unsupported_quantization_type_lists_the_valid_ones(model, tmp_path):
    proc = run_cli(["quantize", str(model), str(tmp_path / "x.gguf"), "--type", "Q9_Z"])
    assert_one_line_error(proc, "Q9_Z", "Q4_K_M", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()


def test_build_with_quantize(stub, model, tmp_path):
    out = tmp_path / "tales-q8"
    build(stub, model, out, "--quantize", "Q8_0")
    g = json.loads(run_exe(out, "--info", "--json").stdout)["manifest"]["model"]["gguf"]
    assert g["file_type"] == "Q8_0"
    text = greedy(out)
    assert len(text.split()) > 10
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("tmp", "cache")) == ["tales-q8"]


# -- splitting ----------------------------------------------------------------------------
def planned_parts(model: Path, limit: int) -> list[list[str]]:
    """The tensors each part must hold for ``--split-size limit``: the model's tensors in
    order, a new part whenever the next tensor would take this part's tensor data over
    ``limit`` (gguf's ``split_max_size``); only a tensor larger than ``limit`` on its own
    may exceed it. A part's header (all the metadata, in the first) comes on top."""
    import gguf

    parts, size = [[]], 0
    for t in gguf.GGUFReader(str(model)).tensors:
        if parts[-1] and size + int(t.n_bytes) > limit:
            parts.append([])
            size = 0
        parts[-1].append(t.name)
        size += int(t.n_bytes)
    return parts


def check_split(model: Path, entries: list[dict], folder: Path, limit: int) -> None:
    """The parts (manifest ``entries``, files in ``folder``) are the planned ones, each
    within ``limit``."""
    import gguf

    planned = planned_parts(model, limit)
    assert len(entries) == len(planned), [e["size"] for e in entries]
    for entry, names in zip(entries, planned, strict=True):
        path = folder / entry["file"]
        assert path.stat().st_size == entry["size"]
        tensors = gguf.GGUFReader(str(path)).tensors
        assert [t.name for t in tensors] == names, entry["file"]
        data = sum(int(t.n_bytes) for t in tensors)
        assert data <= limit or len(tensors) == 1, (entry["file"], data, limit)


def test_split_bundle_runs_from_its_parts(stub, model, tmp_path, expected):
    out = tmp_path / "tales"
    proc = build(stub, model, out, "--split", "--split-size", "300K")
    assert "model parts beside it" in proc.stdout
    m = payload.read_bundle(str(out)).model
    parts = [tmp_path / p["file"] for p in m["parts"]]
    assert m["storage"] == "split" and all(p.exists() for p in parts)
    assert len(planned_parts(model, 300 * 1024)) >= 3  # a first, a middle and a last part
    check_split(model, m["parts"], tmp_path, 300 * 1024)
    assert greedy(out) == expected
    assert "OK" in run_cli(["verify", str(out)], check=True).stdout
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(out, moved / "tales")  # without its parts
    assert_one_line_error(run_exe(moved / "tales", "-p", PROMPT), "missing", parts[0].name)
    with open(parts[-1], "r+b") as f:  # a damaged part
        f.seek(-10, os.SEEK_END)
        f.write(b"\xff" * 10)
    assert run_exe(out, "--verify").returncode != 0


def _pe_stub(path: Path) -> Path:
    head = bytearray(512)
    head[0:2] = b"MZ"
    head[60:64] = (128).to_bytes(4, "little")
    head[128:132] = b"PE\0\0"
    head[132:134] = (0x8664).to_bytes(2, "little")
    path.write_bytes(bytes(head))
    return path


def _sparse_gguf(path: Path, n_bytes: int) -> Path:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor_info("big.weight", [n_bytes // 4], np.dtype(np.float32), n_bytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    aligned = (path.stat().st_size + 31) // 32 * 32
    os.truncate(path, aligned + n_bytes)  # sparse: no disk blocks
    return path


def test_windows_build_over_4_gib_is_refused_unless_split(tmp_path):
    big = _sparse_gguf(tmp_path / "big.gguf", 4 * 2**30 + 2**20)
    stub = _pe_stub(tmp_path / "runtime-windows.exe")
    proc = run_cli(["build", str(big), "-o", str(tmp_path / "chat.exe"), "--runtime", str(stub)])
    assert_one_line_error(proc, "Windows", "--split")
    assert not (tmp_path / "chat.exe").exists()
