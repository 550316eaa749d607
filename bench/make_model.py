"""Make a synthetic llama model for speed work, and quantize it.

Random weights with real llama shapes and stories260K's vocabulary (or, with
``--vocab llama3``, Llama 3's 128,256-token one, from the vocabulary-only GGUF that
llama.cpp's sources carry in the llama-cpp-python sdist), written with the gguf
package, then quantized by llama.cpp's own quantizer (``llama_model_quantize``).
The output is cached in bench/.cache/models (not in git). The text is meaningless;
the speed is real. The output rows of the end-of-generation and other control tokens
are zero, so their logit is 0 while the largest of the others is well above: greedy
decoding never stops early, like llama-bench, which ignores EOS.

    python bench/make_model.py --preset 0.5b --types F16 Q8_0 Q4_0
    python bench/make_model.py --preset tiny --types Q4_0 --vocab llama3

``bench/run.py`` calls ``ensure()`` itself; ``--params`` prints a preset's exact
parameter count.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from bundler.gguf_info import copy_metadata

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "models"
VOCAB_SOURCE = HERE.parent.parent / "shared" / "models" / "stories260K.gguf"

# name: (n_embd, n_layer, n_head, n_head_kv, n_ff)
PRESETS = {
    "tiny": (512, 4, 8, 4, 1024),  # 9M parameters, 36 MB in F32: for tests that need some bulk
    "100m": (768, 12, 12, 4, 2048),  # 76M parameters
    "500m": (1536, 16, 16, 4, 4096),  # 397M parameters (the name is older than the count)
    "0.5b": (1536, 22, 16, 4, 4096),  # 547M parameters: F32 2.19 GB, F16 1.09 GB, Q8_0 0.58 GB
}
FTYPES = ("F32", "F16", "Q4_0", "Q8_0", "Q4_K_M")
N_VOCAB = 512  # stories260K's vocabulary
# Vocabularies a synthetic model can have: name -> (tokens, where the tokenizer comes from).
VOCABS = {
    "stories260K": (N_VOCAB, "../shared/models/stories260K.gguf"),
    "llama3": (128256, "ggml-vocab-llama-bpe.gguf of llama.cpp's sources (the llama-cpp-python sdist)"),
}
LLAMA3_VOCAB = "vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf"  # in the sdist, under its top folder
SDIST_RECORD = HERE.parent / ".venv" / "llama-cpp-python-sdist"  # install.sh writes the sdist's path here
VERSION = 2  # bumped when the weights change; cached files of another version are made again
VERSION_KEY = "llamabundle.synthetic.version"


def n_params(preset: str, n_vocab: int = N_VOCAB) -> int:
    """The exact parameter count of a preset (every tensor write_f32 writes)."""
    n_embd, n_layer, n_head, n_head_kv, n_ff = PRESETS[preset]
    kv = n_embd // n_head * n_head_kv
    layer = 2 * n_embd + 2 * n_embd * n_embd + 2 * kv * n_embd + 3 * n_ff * n_embd
    return 2 * n_vocab * n_embd + n_embd + n_layer * layer


def write_f32(
    path: Path, preset: str, seed: int = 0, vocab_source: Path = VOCAB_SOURCE, progress: bool = True
) -> None:
    import gguf

    n_embd, n_layer, n_head, n_head_kv, n_ff = PRESETS[preset]
    src = gguf.GGUFReader(str(vocab_source))
    w = gguf.GGUFWriter(str(path), "llama")
    tag = "" if vocab_source == VOCAB_SOURCE else f"-{vocab_source.stem}"
    w.add_name(f"synthetic-llama-{preset}{tag}")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_uint32(VERSION_KEY, VERSION)
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
    output = rng.standard_normal((n_vocab, n_embd), dtype=np.float32) * 0.02
    output[_never_generated(src, n_vocab)] = 0.0
    w.add_tensor("output.weight", output)
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
    w.write_tensors_to_file(progress=progress)
    w.close()


def _never_generated(src, n_vocab: int) -> list[int]:
    """The unknown and control tokens (BOS, EOS, ...) and the EOS/EOT/EOM ids."""
    types = src.get_field("tokenizer.ggml.token_type").contents()
    ids = {i for i, kind in enumerate(types) if kind in (2, 3)}  # UNKNOWN, CONTROL
    for key in ("eos", "eot", "eom"):
        field = src.get_field(f"tokenizer.ggml.{key}_token_id")
        if field is not None and field.contents() < n_vocab:
            ids.add(field.contents())
    return sorted(ids)


def _current(path: Path) -> bool:
    import gguf

    field = gguf.GGUFReader(str(path)).get_field(VERSION_KEY)
    return field is not None and field.contents() == VERSION


def quantize(src: Path, dst: Path, qtype: str) -> None:
    """llama.cpp's own quantizer, through `llamabundle quantize`."""
    exe = Path(sys.executable).with_name("llamabundle")
    proc = subprocess.run([str(exe), "quantize", str(src), str(dst), "--type", qtype],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"quantizing to {qtype} failed: {proc.stderr.strip()}")


def model_path(preset: str, qtype: str, vocab: str = "stories260K") -> Path:
    tag = "" if vocab == "stories260K" else f"-{vocab}"
    return CACHE / f"synthetic-{preset}{tag}-{qtype}.gguf"


def vocab_source(vocab: str, log=lambda msg: None) -> Path:
    """The GGUF whose tokenizer a synthetic model copies; Llama 3's is taken out of the
    llama-cpp-python sdist once (a vocabulary-only GGUF, 7.8 MB) into bench/.cache/models."""
    if vocab == "stories260K":
        return VOCAB_SOURCE
    if vocab != "llama3":
        raise ValueError(f"unknown vocabulary {vocab!r}; one of {', '.join(VOCABS)}")
    out = CACHE / "ggml-vocab-llama-bpe.gguf"
    if out.exists():
        return out
    if not SDIST_RECORD.exists():
        sys.exit(f"{SDIST_RECORD} is missing (install.sh writes it): no llama.cpp sources to take "
                 "Llama 3's vocabulary from")  # fmt: skip
    sdist = Path(SDIST_RECORD.read_text().strip())
    log(f"taking Llama 3's vocabulary ({LLAMA3_VOCAB}) out of {sdist.name}")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar if m.name.split("/", 1)[-1] == LLAMA3_VOCAB), None)
        if member is None:
            sys.exit(f"{sdist} has no {LLAMA3_VOCAB}")
        tmp = out.with_suffix(".part")
        tmp.write_bytes(tar.extractfile(member).read())
    tmp.rename(out)
    return out


def ensure(preset: str, qtype: str, log=lambda msg: None, vocab: str = "stories260K") -> Path:
    """The cached model (made, then renamed into place, when missing)."""
    out = model_path(preset, qtype, vocab)
    if out.exists() and _current(out):
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    f32 = model_path(preset, "F32", vocab)
    if not f32.exists() or not _current(f32):
        log(f"writing {f32.name} ({n_params(preset, VOCABS[vocab][0]):,} parameters, random weights)")
        tmp = f32.with_suffix(".part")
        write_f32(tmp, preset, vocab_source=vocab_source(vocab, log), progress=False)
        tmp.rename(f32)
    if qtype != "F32":
        log(f"quantizing {f32.name} to {qtype}")
        tmp = out.with_suffix(".part")
        quantize(f32, tmp, qtype)
        tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="100m")
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0"], choices=sorted(FTYPES))
    ap.add_argument("--vocab", choices=sorted(VOCABS), default="stories260K",
                    help="the tokenizer (default: stories260K's 512 tokens; llama3: 128,256)")  # fmt: skip
    ap.add_argument("--params", action="store_true", help="print the preset's parameter count and exit")
    args = ap.parse_args()
    if args.params:
        print(f"{args.preset}: {n_params(args.preset, VOCABS[args.vocab][0]):,} parameters")
        return
    for qtype in args.types:
        print(ensure(args.preset, qtype, log=lambda m: print(m, file=sys.stderr), vocab=args.vocab))


if __name__ == "__main__":
    main()
