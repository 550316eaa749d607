"""Text generation on llama.cpp's C API.

``Model`` loads the GGUF straight out of the bundle file with
``llama_model_load_from_file_ptr`` (mmapped in place, never copied).
``Session`` owns a context and its KV cache; it reuses the longest cached prefix
of each new prompt, the way llama-server does, so a chat only decodes what is new.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from . import backend
from .errors import ModelError, UsageError

LOAD_MODE_MMAP = 1  # enum llama_load_mode: LLAMA_LOAD_MODE_MMAP


@dataclass(frozen=True)
class Sampling:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1  # -1: a random seed


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    finish_reason: str = "stop"


def make_sampler(C, n_vocab: int, s: Sampling):
    """A llama.cpp sampler chain for ``s`` (free it with ``llama_sampler_free``)."""
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    if s.repeat_penalty != 1.0:
        C.llama_sampler_chain_add(
            chain, C.llama_sampler_init_penalties(n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0)
        )
    if s.temp <= 0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        return chain
    seed = s.seed if s.seed >= 0 else int.from_bytes(os.urandom(4), "little")
    if s.top_k > 0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0.0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_min_p(s.min_p, 1))
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(s.temp))
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


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

    def __init__(self, paths: list[str], offset: int = 0, *, n_gpu_layers: int = 0, progress=None):
        """``progress(fraction)`` is told how far loading got (llama.cpp's own callback)."""
        C = backend.bindings()
        self.C, self._fp = C, None
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
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

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.C.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

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

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace")


class Session:
    """One llama.cpp context with its KV cache, reused across prompts."""

    def __init__(self, model: Model, *, n_ctx: int, n_threads: int, n_batch: int = 512):
        C = model.C
        self.C, self.model = C, model
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = 1
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self.ptr = C.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ModelError(
                f"llama.cpp could not create a context of {n_ctx} tokens; try a smaller --ctx-size"
            )
        self.n_ctx = C.llama_n_ctx(self.ptr)
        self.n_batch, self.n_threads = n_batch, n_threads
        self.cached: list[int] = []

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self.C.llama_free(self.ptr)
            self.ptr = None

    def _decode(self, tokens: list[int]) -> None:
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i : i + self.n_batch]
            arr = (self.C.llama_token * len(chunk))(*chunk)
            rc = self.C.llama_decode(self.ptr, self.C.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:  # drop whatever part of the chunk reached the KV cache
                self.C.llama_memory_seq_rm(self.C.llama_get_memory(self.ptr), -1, len(self.cached), -1)
                raise ModelError(f"llama.cpp failed to evaluate the prompt (llama_decode={rc})")
            self.cached.extend(chunk)

    def generate(
        self, tokens: list[int], sampling: Sampling, *, max_tokens: int = -1, stats: Stats | None = None
    ) -> Iterator[str]:
        """Yield the completion of ``tokens`` as text, piece by piece (valid UTF-8 only)."""
        stats = stats if stats is not None else Stats()
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise UsageError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; "
                "shorten it or raise --ctx-size"
            )
        # Reuse the longest cached prefix; always leave one token to decode for fresh logits.
        keep = 0
        limit = min(len(self.cached), len(tokens) - 1)
        while keep < limit and self.cached[keep] == tokens[keep]:
            keep += 1
        mem = self.C.llama_get_memory(self.ptr)
        self.C.llama_memory_seq_rm(mem, -1, keep, -1)
        del self.cached[keep:]
        stats.prompt_tokens, stats.cached_tokens = len(tokens), keep
        t0 = time.perf_counter()
        self._decode(tokens[keep:])
        stats.prompt_seconds = time.perf_counter() - t0

        sampler = make_sampler(self.C, self.model.n_vocab, sampling)
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        t1 = time.perf_counter()
        try:
            stats.finish_reason = "length"
            n = 0
            while max_tokens < 0 or n < max_tokens:
                if len(self.cached) >= self.n_ctx:
                    break
                token = self.C.llama_sampler_sample(sampler, self.ptr, -1)
                if self.model.is_eog(token):
                    stats.finish_reason = "stop"
                    break
                n += 1
                stats.completion_tokens = n
                text = utf8.decode(self.model.piece(token))
                if text:
                    yield text
                self._decode([token])
            tail = utf8.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            stats.generation_seconds = time.perf_counter() - t1
            self.C.llama_sampler_free(sampler)
