#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-completion, llama-simple, llama-server)
# from the sources vendored in the llama-cpp-python sdist that install.sh used, with
# GGML_NATIVE=ON: the physical limit for this CPU. Output: bench/.cache/llama.cpp/bin.
set -euo pipefail
cd "$(dirname "$0")"
sdist=$(cat ../.venv/llama-cpp-python-sdist)
out=.cache/llama.cpp
if [ -x "$out/bin/llama-bench" ] && [ -x "$out/bin/llama-completion" ]; then
  echo "reference llama.cpp already built in bench/$out/bin" >&2; exit 0
fi
rm -rf .cache/src && mkdir -p .cache/src
tar -xzf "$sdist" -C .cache/src
src=$(echo .cache/src/*/vendor/llama.cpp)
cmake -S "$src" -B .cache/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build .cache/build -j "$(nproc)" \
  --target llama-bench llama-completion llama-simple llama-server
mkdir -p "$out/bin"
cp .cache/build/bin/llama-{bench,completion,simple,server} "$out/bin/"
echo "reference llama.cpp built in bench/$out/bin" >&2
