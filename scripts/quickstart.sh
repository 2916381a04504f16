#!/usr/bin/env bash
# The README's main command. Installs what is missing, builds loom, fetches the default model,
# then runs the main job. Idempotent: a second run reuses the packages, the build and the model.
#
# Until `loom train` lands (issue: LoRA and QLoRA training), the main job shows what this machine
# gives loom -- CPU features and kernels -- and runs the matrix-product benchmark in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh
scripts/build.sh build
scripts/fetch_models.sh

echo "== loom info"
build/loom info
echo "== matrix-product benchmark (quick; full run: build/bench/bench_gemm)"
build/bench/bench_gemm --quick
