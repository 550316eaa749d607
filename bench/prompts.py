"""Prompts of an exact token count, each one different from its first word on.

llama.cpp's own tokenizer (through llama-cpp-python's C API, vocabulary only)
counts the tokens, BOS included, exactly as the runtime, llama-server and
llama-completion tokenize a prompt. A prompt of N tokens is N - 1 text tokens
after BOS, like llama-bench's pp512.
"""

from __future__ import annotations

import ctypes
import random
from pathlib import Path

WORDS = """Once upon a time there was little girl named Lily she loved to play outside in the park
one day saw big red ball wanted with it but was too high her mom said we can go home and
boy Tom dog cat bird tree sun sky happy sad run jump walk found box toy car friend smile
looked at him very fun good day they were all together after that bright blue green small
house garden flower river fish boat rain cold warm night moon star sleep dream bed book
read story king queen castle dragon forest path rock stone bear rabbit mouse cheese apple
cake cookie milk juice bath water sand beach shell wave wind kite hill field farm cow pig
""".split()
FILLERS = ["a", "I", "o", "e", "s", "t", "the", "and", "to", "it", "is", "x", "y"]


_KEEP: dict = {}


class Tokenizer:
    """A GGUF's vocabulary, loaded without its weights."""

    def __init__(self, model: Path):
        import llama_cpp.llama_cpp as C

        self.C = C
        # llama.cpp keeps the log callback for the life of the process: it must never be
        # freed (a collected one crashed the next model load in the same test process)
        if "quiet" not in _KEEP:
            _KEEP["quiet"] = C.llama_log_callback(lambda level, text, user_data: None)
            C.llama_log_set(_KEEP["quiet"], ctypes.c_void_p())
        C.llama_backend_init()
        params = C.llama_model_default_params()
        params.vocab_only = True
        self.model = C.llama_model_load_from_file(str(model).encode(), params)
        if not self.model:
            raise SystemExit(f"cannot read the vocabulary of {model}")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.eos = C.llama_vocab_eos(self.vocab)
        self.firsts = self._first_words()

    def _first_words(self, want: int = 400, scan: int = 20000) -> list[str]:
        """Words that are one token each, every one a different token: a prompt that
        starts with one of them shares nothing but BOS with one that starts with another."""
        C, seen, out = self.C, set(), []
        buf = ctypes.create_string_buffer(64)
        for tid in range(min(scan, C.llama_vocab_n_tokens(self.vocab))):
            n = C.llama_token_to_piece(self.vocab, tid, buf, len(buf), 0, False)
            piece = buf.raw[:n].decode("utf-8", "replace") if n > 0 else ""
            word = piece[1:]
            if piece.startswith(" ") and word.isascii() and word.isalpha():
                toks = self.tokenize(word)[1:]
                if len(toks) == 1 and toks[0] not in seen:
                    seen.add(toks[0])
                    out.append(word)
                    if len(out) >= want:
                        break
        return out or [w.capitalize() for w in WORDS]

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        buf = (self.C.llama_token * cap)()
        n = self.C.llama_tokenize(self.vocab, data, len(data), buf, cap, True, True)
        return list(buf[:n])

    def count(self, text: str) -> int:
        return len(self.tokenize(text))

    def close(self) -> None:
        if self.model:
            self.C.llama_model_free(self.model)
            self.model = None


def make_prompt(tok: Tokenizer, n_tokens: int, seed: int) -> str:
    """Text that tokenizes to exactly ``n_tokens`` (BOS included). Seed k starts with
    the k-th one-token word of the vocabulary, so prompts with different seeds share no
    prefix but BOS (while there are words left: hundreds in any vocabulary)."""
    rng = random.Random(seed)
    words = [tok.firsts[seed % len(tok.firsts)]]
    if tok.count(words[0]) > n_tokens:
        raise ValueError(f"cannot make a prompt of {n_tokens} tokens")
    for _ in range(100 * n_tokens):
        have = tok.count(" ".join(words))
        if have == n_tokens:
            return " ".join(words)
        word = rng.choice(WORDS)
        if tok.count(" ".join([*words, word])) <= n_tokens:
            words.append(word)
            continue
        for filler in [*FILLERS, *WORDS]:  # close the last gap exactly
            if tok.count(" ".join([*words, filler])) == n_tokens:
                return " ".join([*words, filler])
        if len(words) > 1:  # no single word closes the gap: back off one word and go on
            words.pop()
    raise ValueError(f"cannot make a prompt of {n_tokens} tokens")


class Prompts:
    """Prompts for one benchmark session: never the same one twice."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.next_seed = tok, 0

    def new(self, n_tokens: int) -> str:
        seed, self.next_seed = self.next_seed, self.next_seed + 1
        text = make_prompt(self.tok, n_tokens, seed)
        assert self.tok.count(text) == n_tokens
        return text
