#!/usr/bin/env bash
# The README's main command. Installs what is missing, builds loom, fetches the default model
# (SmolLM2-135M-Instruct, Q4_1 GGUF) and trains the default recipe, recipes/quickstart_qlora.yaml:
# QLoRA on a mix of FOLDOC (computing dictionary, 15%) and WordNet (85%), a few minutes on
# 2 cores. Extra arguments go to `loom train` as overrides, e.g. train.steps=200.
# Idempotent: a second run reuses the packages, the build and the model, and trains afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh
scripts/build.sh build
scripts/fetch_models.sh

echo "== loom train recipes/quickstart_qlora.yaml $*"
rm -rf runs/quickstart_qlora
build/loom train recipes/quickstart_qlora.yaml "$@"
