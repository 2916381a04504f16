#!/usr/bin/env bash
# Configures and builds loom. Usage: scripts/build.sh [BUILD_DIR] [extra cmake args...]
# Default: build/ in Release (assertions stay on). Idempotent; reuses the build folder.
# LOOM_BUILD_TARGET=name builds one target (e.g. unit_tests: the unit test programs) not all.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
shift || true
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
else
  cmake -S . -B "$build_dir" "$@" >/dev/null
fi
target=()
[ -n "${LOOM_BUILD_TARGET:-}" ] && target=(--target "$LOOM_BUILD_TARGET")
cmake --build "$build_dir" --parallel "$(nproc)" "${target[@]}"
