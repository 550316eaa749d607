"""A model on llama.cpp's C API, and the contexts made for it.

``Model`` loads the GGUF straight out of the bundle file with
``llama_model_load_from_file_ptr`` (mmapped in place, never copied).
``new_context`` is the one place a llama.cpp context is made (the engine's, and
the server's embedding context).
"""

from __future__ import annotations

import ctypes
import os

from ..errors import ModelError
from . import backend

LOAD_MODE_MMAP = 1  # enum llama_load_mode: LLAMA_LOAD_MODE_MMAP


def _crt():
    """(fopen(path), fseek64, fclose) of the C runtime whose ``FILE*`` llama.cpp can read.

    The FILE handed to ``llama_model_load_from_file_ptr`` must come from the C runtime
    that libllama itself links: a FILE of another C runtime is a different struct.
    On POSIX that is the one libc already in the process. On Windows it is msvcrt
    for a mingw-built llama.dll and ucrtbase for an MSVC build, whose ``fseek``
    takes a 32-bit long: ``_fseeki64`` reaches models past 2 GiB, and ``_wfopen``
    opens paths outside the ANSI code page."""
    if "crt" not in _cache:
        vp = ctypes.c_void_p
        if os.name == "posix":
            lib = ctypes.CDLL(None, use_errno=True)  # find_library would run ldconfig
            lib.fopen.restype, lib.fopen.argtypes = vp, [ctypes.c_char_p, ctypes.c_char_p]
            seek = getattr(lib, "fseeko", None) or lib.fseek

            def fopen(path: str):
                return lib.fopen(os.fsencode(path), b"rb")
        else:
            lib = ctypes.CDLL(windows_crt(backend.bindings()._lib._name), use_errno=True)
            lib._wfopen.restype, lib._wfopen.argtypes = vp, [ctypes.c_wchar_p, ctypes.c_wchar_p]
            seek = lib._fseeki64

            def fopen(path: str):
                return lib._wfopen(path, "rb")

        lib.fclose.argtypes = [vp]
        seek.restype, seek.argtypes = ctypes.c_int, [vp, ctypes.c_int64, ctypes.c_int]
        _cache["crt"] = fopen, seek, lib.fclose
    return _cache["crt"]


def windows_crt(dll: str) -> str:
    """The C runtime a Windows DLL imports its stdio from: "ucrtbase" (MSVC, through
    the api-ms-win-crt-* forwarders) or "msvcrt" (mingw-w64's default)."""
    with open(dll, "rb") as f:
        data = f.read().lower()
    return "ucrtbase" if b"api-ms-win-crt-stdio" in data or b"ucrtbase.dll" in data else "msvcrt"


_cache: dict = {}


class Model:
    """A GGUF model mapped in place: one file read from byte ``offset`` on (through
    ``llama_model_load_from_file_ptr``), or the shards of a split model."""

    def __init__(self, paths: list[str], offset: int = 0, *, n_gpu_layers: int = 0, progress=None,
                 devices: list[int] | None = None, tensor_split: list[float] | None = None):  # fmt: skip
        """``progress(fraction)`` is told how far loading got (llama.cpp's own callback);
        ``devices`` (ggml device handles) and ``tensor_split`` (a share for each) spread the
        offloaded layers over several devices (RPC workers: runtime/llama/pool.py)."""
        C = backend.bindings()
        self.C, self._fp, self._eog = C, None, None
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.n_gpu_layers = n_gpu_layers
        self.remote = bool(devices)  # some layers live on RPC workers
        if devices:
            self._devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)  # NULL-terminated
            params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
            self._split = (ctypes.c_float * C.LLAMA_MAX_DEVICES)(*(tensor_split or []))
            params.tensor_split = self._split
        params.load_mode = LOAD_MODE_MMAP
        if progress is not None:
            self._on_progress = C.llama_progress_callback(lambda frac, _ud: progress(frac) or True)
            params.progress_callback = self._on_progress
        if len(paths) > 1:
            arr = (ctypes.c_char_p * len(paths))(*(os.fsencode(p) for p in paths))
            self.ptr = C.llama_model_load_from_splits(arr, len(paths), params)
        else:
            self.ptr = self._load_at(paths[0], offset, params)
        if not self.ptr:
            if self._fp:
                _crt()[2](self._fp)
            self._fp = None
            detail = backend.recent_logs().splitlines()[-1:] or ["unknown error"]
            raise ModelError(f"llama.cpp could not load the model: {detail[0]}")
        self.vocab = C.llama_model_get_vocab(self.ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(self.ptr)

    def _load_at(self, path: str, offset: int, params):
        fopen, fseek, _ = _crt()
        self._fp = fopen(path)
        if not self._fp:
            raise ModelError(f"cannot open {path}: {os.strerror(ctypes.get_errno())}")
        if fseek(self._fp, offset, os.SEEK_SET) != 0:
            raise ModelError(f"cannot seek in {path}")
        return self.C.llama_model_load_from_file_ptr(ctypes.c_void_p(self._fp), params)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self.C.llama_model_free(self.ptr)
            self.ptr = None
        if getattr(self, "_fp", None):
            _crt()[2](self._fp)
            self._fp = None

    def chat_template(self) -> str | None:
        tmpl = self.C.llama_model_chat_template(self.ptr, None)
        return tmpl.decode("utf-8", "replace") if tmpl else None

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        buf = (self.C.llama_token * cap)()
        n = self.C.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            buf = (self.C.llama_token * -n)()
            n = self.C.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, True)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """A token's bytes. Control tokens (BOS, chat markers) render only with ``special``:
        generated text leaves them out, as llama.cpp's own tools do."""
        buf = ctypes.create_string_buffer(256)
        n = self.C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(self.C.llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token (EOS, EOT, a chat template's end marker, ...)."""
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if self.is_eog(t)]
        return self._eog

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace")


POOLING_MEAN = 1  # enum llama_pooling_type


def new_context(model: Model, *, n_ctx: int, n_threads: int, n_batch: int, n_seq_max: int = 1,
                embeddings: bool = False):  # fmt: skip
    """A llama.cpp context for ``model``: ``n_seq_max`` sequences over one unified KV cache
    of ``n_ctx`` cells (as ``llama-server --kv-unified``: runtime/llama/memory.py's estimate
    of n_ctx cells holds whatever the number of slots), or a mean-pooled embedding context."""
    C = model.C
    params = C.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = n_seq_max
    params.kv_unified = True
    params.n_threads = params.n_threads_batch = n_threads
    params.no_perf = True
    # With no layer on a GPU, llama.cpp would still send large prompt batches to one (op
    # offload): on an integrated GPU or a CPU renderer that is many times slower.
    params.op_offload = model.n_gpu_layers > 0
    if embeddings:
        params.embeddings = True
        params.pooling_type = POOLING_MEAN
    ctx = C.llama_init_from_model(model.ptr, params)
    if not ctx:
        what = "an embedding context" if embeddings else f"a context of {n_ctx} tokens"
        raise ModelError(f"llama.cpp could not create {what}; try a smaller --ctx-size")
    return ctx
