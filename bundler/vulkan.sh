#!/usr/bin/env bash
# Build ggml's Vulkan backend as one loadable module (libggml-vulkan.so) from the same
# llama-cpp-python sdist as the wheel, for the wheel's libggml-base: the wheel is built with
# GGML_BACKEND_DL, so a backend is a module ggml loads at run time, and building this one
# alone leaves the wheel (and its 14 CPU variants) as they are.
#
# usage: bundler/vulkan.sh SDIST OUT_DIR      (prints the module's path)
#
# Debian 12's Vulkan headers (1.3.239) predate VK_EXT_layer_settings (1.3.272), which
# ggml-vulkan.cpp uses only to switch on the validation layer's best-practice checks when
# that layer is installed; a guard builds it without them on older headers.
set -euo pipefail
sdist=$1
out=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/lb-vulkan.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar -xzf "$sdist" -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
python3 - "$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
start = text.index("    VkBool32 enable_best_practice = layer_settings;")
end_marker = "&layer_setting_info);\n"
end = text.index(end_marker, start) + len(end_marker)
guarded = ("#ifdef VK_EXT_layer_settings  /* llamabundle: Debian 12's headers lack it */\n"
           + text[start:end]
           + "#else\n    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, "
             "layers, extensions);\n#endif\n")
open(path, "w").write(text[:start] + guarded + text[end:])
PY

cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU=OFF -DGGML_VULKAN=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_COMMON=OFF >&2
cmake --build "$work/build" --target ggml-vulkan -j "$(nproc)" >&2
module=$(find "$work/build" -name 'libggml-vulkan.so' -type f | head -n1)
[ -n "$module" ] || { echo "the Vulkan build made no libggml-vulkan.so" >&2; exit 1; }
strip --strip-unneeded "$module"
mkdir -p "$out"
cp "$module" "$out/libggml-vulkan.so.tmp" && mv "$out/libggml-vulkan.so.tmp" "$out/libggml-vulkan.so"
echo "$out/libggml-vulkan.so"
