#!/usr/bin/env bash
# Runs one interop test script with the repo's Python environment. Exit 77 = skipped (ctest shows
# it as Skipped): the environment or the reference is missing. The reason is printed loudly.
py=$1; shift
if [ ! -x "$py" ]; then
  echo "SKIPPED: no Python environment at $py (run scripts/setup_python.sh)" >&2
  exit 77
fi
exec "$py" "$@"
