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
built() {
  for t in $tools; do [ -x "$out/bin/$t" ] || return 1; done
}
if built; then
  echo "reference llama.cpp already built in $out/bin" >&2
  echo "$out/bin"; exit 0
fi
# One build at a time per key: a second run (another test session, the bench) waits for
# the first and then reuses what it built, instead of deleting its build folder.
mkdir -p "$out"
exec 9>"$out.lock"
if ! flock -n 9; then
  echo "waiting for another build of the reference llama.cpp to finish (lock: $out.lock)" >&2
  flock 9
fi
if built; then
  echo "reference llama.cpp built meanwhile in $out/bin" >&2
  echo "$out/bin"; exit 0
fi
echo "building the reference llama.cpp ($tools) natively from $(basename "$sdist"); about 10 minutes on 2 cores" >&2
# A private build folder beside the result, removed when this script ends (a run that was
# killed outright leaves its own, which the next build, holding the lock, removes).
rm -rf "$out"/.build.*
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$work/src"
tar -xzf "$sdist" -C "$work/src"
src=$(echo "$work"/src/*/vendor/llama.cpp)
# shellcheck disable=SC2086
cmake -S "$src" -B "$work/build" $flags >/dev/null
# shellcheck disable=SC2086
cmake --build "$work/build" -j "$(nproc)" --target $tools >&2
mkdir "$work/bin"
for t in $tools; do cp "$work/build/bin/$t" "$work/bin/"; done
# Into place by renames, so bin/ is never seen half-copied: a bin/ that lacks a tool (one
# deleted by hand, say) moves aside first (renaming onto a folder that is not empty
# fails), then the new one takes its name in one rename.
if [ -e "$out/bin" ]; then mv -T "$out/bin" "$work/old-bin"; fi
mv -T "$work/bin" "$out/bin"
echo "reference llama.cpp built in $out/bin" >&2
echo "$out/bin"
