#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test.
#   1. Release build (assertions on, warnings as errors) -> ctest, all labels (unit + interop)
#   2. ASan+UBSan build of the unit test programs        -> ctest -L unit
# Interop tests whose reference cannot be installed report themselves SKIPPED, never passed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh
if ! scripts/setup_python.sh; then
  echo "test.sh: WARNING: the Python environment could not be set up; interop tests will be SKIPPED" >&2
fi
scripts/fetch_models.sh || echo "test.sh: WARNING: the real model could not be fetched; tests that need it will be SKIPPED" >&2

jobs=$(nproc)
echo "== Release build (assertions on, -Werror)"
scripts/build.sh build -DLOOM_WERROR=ON
echo "== ctest: Release, all tests"
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== ASan+UBSan build of the unit tests"
LOOM_BUILD_TARGET=unit_tests scripts/build.sh build-asan -DLOOM_WERROR=ON -DLOOM_SANITIZE=ON -DLOOM_BUILD_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo
echo "== ctest: ASan+UBSan, unit tests"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" -L unit
