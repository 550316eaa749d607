#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-completion, llama-simple, llama-server)
# from the sources vendored in the llama-cpp-python sdist that install.sh used, with
# GGML_NATIVE=ON: the physical limit for this CPU. About 10 minutes on 2 cores.
#
# The tools are cached in ~/.cache/llamabundle/toolchain/reference/<key>/bin (beside
# install.sh's wheel cache, so fresh clones reuse them; never in git), where the key
# hashes the sdist, the build flags and this CPU's flags (a native build is only valid
# on the CPU it was built for). Prints that bin directory on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")"
sdist=$(cat ../.venv/llama-cpp-python-sdist)
flags="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF"
tools="llama-bench llama-completion llama-simple llama-server"
key=$({ sha256sum "$sdist" | cut -d' ' -f1; echo "$flags"; grep -m1 '^flags' /proc/cpuinfo; } | sha256sum | cut -c1-12)
# $HOME, not $XDG_CACHE_HOME: the tests point XDG into a temporary folder, and this
# 10-minute build must outlive them.
out=${LLAMABUNDLE_TOOLCHAIN_CACHE:-$HOME/.cache/llamabundle/toolchain}/reference/$key
ok=1
for t in $tools; do [ -x "$out/bin/$t" ] || ok=0; done
if [ "$ok" = 1 ]; then
  echo "reference llama.cpp already built in $out/bin" >&2
  echo "$out/bin"; exit 0
fi
echo "building the reference llama.cpp ($tools) natively from $(basename "$sdist"); about 10 minutes on 2 cores" >&2
work=$out.build
rm -rf "$work" && mkdir -p "$work/src"
tar -xzf "$sdist" -C "$work/src"
src=$(echo "$work"/src/*/vendor/llama.cpp)
# shellcheck disable=SC2086
cmake -S "$src" -B "$work/build" $flags >/dev/null
# shellcheck disable=SC2086
cmake --build "$work/build" -j "$(nproc)" --target $tools >&2
mkdir -p "$out/bin.part"
for t in $tools; do cp "$work/build/bin/$t" "$out/bin.part/"; done
rm -rf "$out/bin" && mv "$out/bin.part" "$out/bin"
rm -rf "$work"
echo "reference llama.cpp built in $out/bin" >&2
echo "$out/bin"
