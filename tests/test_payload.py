"""The payload format: written by the bundler, read by the runtime."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest

from bundler import fuse
from runtime.bundle import payload
from runtime.errors import PayloadError


@pytest.fixture
def fused(dummy_stub, model, tmp_path):
    return fuse.fuse(dummy_stub, model, tmp_path / "tales")


def test_round_trip_layout(fused, model, dummy_stub):
    b = payload.read_bundle(str(fused.path))
    m = b.model
    assert b.payload_start == dummy_stub.stat().st_size
    assert m["offset"] % payload.MODEL_ALIGNMENT == 0
    assert m["size"] == model.stat().st_size
    assert m["sha256"] == "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
    with open(fused.path, "rb") as f:
        f.seek(m["offset"])
        assert f.read(m["size"]) == model.read_bytes()
        assert f.read(0) == b""
    assert m["gguf"]["architecture"] == "llama"
    assert m["gguf"]["context_length"] == 2048
    assert m["gguf"]["chat_template"] is False
    assert b.manifest["stub"]["os"] == "linux" and b.manifest["stub"]["format"] == "elf"
    assert fused.size == fused.path.stat().st_size
    assert os.access(fused.path, os.X_OK)


def test_builds_are_reproducible(dummy_stub, model, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = fuse.fuse(dummy_stub, model, tmp_path / "a")
    b = fuse.fuse(dummy_stub, model, tmp_path / "b")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.build_id == b.build_id == a.manifest["build"]["build_id"]
    assert a.manifest["build"]["source_date_epoch"] == 1700000000
    c = fuse.fuse(dummy_stub, model, tmp_path / "c", settings={"temp": 0.2})
    assert c.manifest["build"]["build_id"] != a.manifest["build"]["build_id"]


def test_refusing_a_bundle_as_stub_strips_its_payload(fused, model, tmp_path, dummy_stub):
    again = fuse.fuse(fused.path, model, tmp_path / "again")
    assert again.manifest["stub"]["sha256"] == fused.manifest["stub"]["sha256"]
    assert again.path.read_bytes() == fused.path.read_bytes()


def _rewrite_manifest(path, change):
    """Replace the manifest with a changed one, keeping the trailer consistent."""
    b = payload.read_bundle(str(path))
    data = bytearray(path.read_bytes())
    _, _, _, _, start, m_off, m_len, tail, _ = payload.TRAILER.unpack(data[-payload.TRAILER.size :])
    manifest = change(json.loads(data[m_off : m_off + m_len]))
    raw = payload.encode_manifest(manifest)
    tail_bytes = bytes(data[m_off + m_len : m_off + m_len + tail])
    path.write_bytes(
        bytes(data[:m_off])
        + raw
        + tail_bytes
        + payload.encode_trailer(b.payload_start, m_off, raw, tail_bytes)
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[: len(d) // 2], "no llamabundle payload"),
        (lambda d: d[:-1], "no llamabundle payload"),
        (lambda d: d[: -payload.TRAILER.size - 3] + d[-payload.TRAILER.size :], "damaged payload trailer"),
        (lambda d: b"x" * 10, "no llamabundle payload"),
    ],
)
def test_truncation_is_refused(fused, damage, message):
    fused.path.write_bytes(damage(fused.path.read_bytes()))
    with pytest.raises(PayloadError, match=message):
        payload.read_bundle(str(fused.path))


def test_manifest_damage_is_caught_by_its_checksum(fused):
    data = bytearray(fused.path.read_bytes())
    m_off = payload.TRAILER.unpack(data[-payload.TRAILER.size :])[5]
    data[m_off + 10] ^= 0x01
    fused.path.write_bytes(data)
    with pytest.raises(PayloadError, match="damaged manifest"):
        payload.read_bundle(str(fused.path))


def test_model_header_damage_is_caught_before_llama_cpp(fused):
    data = bytearray(fused.path.read_bytes())
    off = payload.read_bundle(str(fused.path)).model["offset"]
    data[off + 100] ^= 0x40  # inside the GGUF metadata
    fused.path.write_bytes(data)
    with pytest.raises(PayloadError, match="damaged model header"):
        payload.read_bundle(str(fused.path))


def test_newer_manifest_schema_is_refused_clearly(fused):
    _rewrite_manifest(fused.path, lambda m: {**m, "schema": payload.MANIFEST_SCHEMA + 1})
    with pytest.raises(PayloadError, match="built by a newer llamabundle"):
        payload.read_bundle(str(fused.path))


def test_newer_layout_is_refused_clearly(fused):
    data = bytearray(fused.path.read_bytes())
    fields = list(payload.TRAILER.unpack(data[-payload.TRAILER.size :]))
    fields[1] = payload.LAYOUT_VERSION + 1
    data[-payload.TRAILER.size :] = payload.TRAILER.pack(*fields)
    fused.path.write_bytes(data)
    with pytest.raises(PayloadError, match="built by a newer llamabundle"):
        payload.read_bundle(str(fused.path))


def test_older_schema_goes_through_its_migration(monkeypatch, fused):
    def from_zero(m):
        return {**m, "schema": 1, "settings": m.pop("baked")}

    monkeypatch.setitem(payload.MIGRATIONS, 0, from_zero)
    b = payload.read_bundle(str(fused.path))
    old = {k: v for k, v in b.manifest.items() if k != "settings"}
    old.update(schema=0, baked={"temp": 0.1})
    assert payload.migrate_manifest(old)["settings"] == {"temp": 0.1}


def test_model_outside_payload_is_refused(fused):
    _rewrite_manifest(fused.path, lambda m: {**m, "model": {**m["model"], "stored_size": 10**12}})
    with pytest.raises(PayloadError, match="outside the payload"):
        payload.read_bundle(str(fused.path))


def test_unknown_storage_is_refused_clearly(fused):
    _rewrite_manifest(fused.path, lambda m: {**m, "model": {**m["model"], "storage": "brotli"}})
    with pytest.raises(PayloadError, match="'brotli', which this runtime cannot read"):
        payload.read_bundle(str(fused.path))


def test_trailer_is_fixed_size_little_endian():
    raw = payload.encode_trailer(1, 2, b"{}")
    assert len(raw) == payload.TRAILER.size
    assert raw.startswith(payload.MAGIC)
    assert struct.unpack_from("<I", raw, 12)[0] == zlib.crc32(b"{}")


def test_user_space_copy_gives_the_same_bundle(dummy_stub, model, tmp_path, monkeypatch):
    """Where the kernel refuses copy_file_range (another filesystem, an old kernel), the
    model goes through user space, with the same bytes and hashes."""
    import errno

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    kernel = fuse.fuse(dummy_stub, model, tmp_path / "kernel")
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    user = fuse.fuse(dummy_stub, model, tmp_path / "user")
    assert calls and user.path.read_bytes() == kernel.path.read_bytes()
    assert payload.read_bundle(str(user.path)).model["sha256"] == kernel.manifest["model"]["sha256"]


def test_a_hash_started_early_gives_the_same_bundle(dummy_stub, model, tmp_path, monkeypatch):
    """`llamabundle build` starts the model's sha256 before reading its metadata; the
    bundle is the same as one whose hash starts at the copy."""
    from bundler.copying import ModelHash

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    late = fuse.fuse(dummy_stub, model, tmp_path / "late")
    early = fuse.fuse(dummy_stub, model, tmp_path / "early", model_hash=ModelHash(model))
    assert early.path.read_bytes() == late.path.read_bytes()
    assert early.manifest["model"]["header_sha256"] == late.manifest["model"]["header_sha256"]


def test_a_model_that_changes_after_its_hash_began_is_refused(dummy_stub, model, tmp_path):
    import shutil

    from bundler.copying import ModelHash
    from bundler.errors import InputError

    work = tmp_path / "work"
    work.mkdir()
    src = work / "m.gguf"
    shutil.copyfile(model, src)
    started = ModelHash(src)
    started.future.result()
    with open(src, "ab") as f:  # the file grows between the hash and the copy
        f.write(b"\0" * 64)
    with pytest.raises(InputError, match="changed while it was being read"):
        fuse.fuse(dummy_stub, src, work / "out", model_hash=started)
    assert sorted(p.name for p in work.iterdir()) == ["m.gguf"]  # nothing half-written left
