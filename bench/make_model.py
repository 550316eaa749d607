"""Make a synthetic llama model for speed work, and quantize it.

Random weights with real llama shapes and stories260K's vocabulary, written with
the gguf package, then quantized by llama.cpp's own quantizer
(``llama_model_quantize``). The output is cached in bench/.cache/models (not in
git). The text is meaningless; the speed is real.

    python bench/make_model.py --preset 100m --types Q8_0 Q4_0
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import numpy as np

from bundler.gguf_info import copy_metadata

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "models"
VOCAB_SOURCE = HERE.parent.parent / "shared" / "models" / "stories260K.gguf"

# name: (n_embd, n_layer, n_head, n_head_kv, n_ff)
PRESETS = {
    "tiny": (512, 4, 8, 4, 1024),  # 9M parameters, 36 MB in F32: for tests that need some bulk
    "100m": (768, 12, 12, 4, 2048),
    "500m": (1536, 16, 16, 4, 4096),
}
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}


def write_f32(path: Path, preset: str, seed: int = 0, vocab_source: Path = VOCAB_SOURCE) -> None:
    import gguf

    n_embd, n_layer, n_head, n_head_kv, n_ff = PRESETS[preset]
    src = gguf.GGUFReader(str(vocab_source))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"synthetic-llama-{preset}")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    copy_metadata(src, w, skip=lambda key: not key.startswith("tokenizer."))  # the tokenizer as it is
    n_vocab = len(src.get_field("tokenizer.ggml.tokens").contents())
    rng = np.random.default_rng(seed)
    kv = n_embd // n_head * n_head_kv

    def t(name, *shape):
        if len(shape) == 1:
            w.add_tensor(name, np.ones(shape, dtype=np.float32))
        else:
            w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02))

    t("token_embd.weight", n_vocab, n_embd)
    t("output_norm.weight", n_embd)
    t("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", n_embd)
        t(p + "attn_q.weight", n_embd, n_embd)
        t(p + "attn_k.weight", kv, n_embd)
        t(p + "attn_v.weight", kv, n_embd)
        t(p + "attn_output.weight", n_embd, n_embd)
        t(p + "ffn_norm.weight", n_embd)
        t(p + "ffn_gate.weight", n_ff, n_embd)
        t(p + "ffn_down.weight", n_embd, n_ff)
        t(p + "ffn_up.weight", n_ff, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()


def quantize(src: Path, dst: Path, qtype: str) -> None:
    import llama_cpp.llama_cpp as C

    params = C.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = 0
    rc = C.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"quantizing to {qtype} failed ({rc})")


def model_path(preset: str, qtype: str) -> Path:
    return CACHE / f"synthetic-{preset}-{qtype}.gguf"


def ensure(preset: str, qtype: str) -> Path:
    out = model_path(preset, qtype)
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    f32 = model_path(preset, "F32")
    if not f32.exists():
        tmp = f32.with_suffix(".part")
        write_f32(tmp, preset)
        tmp.rename(f32)
    if qtype != "F32":
        tmp = out.with_suffix(".part")
        quantize(f32, tmp, qtype)
        tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="100m")
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0"], choices=sorted(FTYPES))
    args = ap.parse_args()
    for qtype in args.types:
        print(ensure(args.preset, qtype))


if __name__ == "__main__":
    main()
