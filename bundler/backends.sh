#!/usr/bin/env bash
# Build ggml's Vulkan and RPC backends as loadable modules (libggml-vulkan.so,
# libggml-rpc.so) from the same llama-cpp-python sdist as the wheel, for the wheel's
# libggml-base: the wheel is built with GGML_BACKEND_DL, so a backend is a module ggml
# loads at run time, and building these alone leaves the wheel (and its 14 CPU variants)
# as they are. bundler/ggml_source.py makes our two changes to ggml's sources first.
#
# usage: bundler/backends.sh SDIST OUT_DIR      (prints the modules' paths)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sdist=$1
out=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/lb-backends.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar -xzf "$sdist" -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
python3 "$here/ggml_source.py" vulkan "$src"
python3 "$here/ggml_source.py" rpc "$src"

cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU=OFF -DGGML_VULKAN=ON -DGGML_RPC=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_COMMON=OFF >&2
cmake --build "$work/build" --target ggml-vulkan ggml-rpc -j "$(nproc)" >&2
mkdir -p "$out"
for name in vulkan rpc; do
  module=$(find "$work/build" -name "libggml-$name.so" -type f | head -n1)
  [ -n "$module" ] || { echo "the backend build made no libggml-$name.so" >&2; exit 1; }
  strip --strip-unneeded "$module"
  cp "$module" "$out/libggml-$name.so.tmp" && mv "$out/libggml-$name.so.tmp" "$out/libggml-$name.so"
  echo "$out/libggml-$name.so"
done
