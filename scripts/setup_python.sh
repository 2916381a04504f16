#!/usr/bin/env bash
# Makes the repo's Python environment (.venv) for the interop tests and golden-file scripts:
# Debian's python3 with its system packages visible (numpy, python3-torch), plus the PyPI
# references in scripts/python-requirements.txt (and, without their dependencies,
# scripts/python-requirements-nodeps.txt), then llama.cpp (llama-cpp-python, built from
# source for AVX2, kept as a wheel) at the version scripts/python-requirements-llamacpp.txt
# pins. A failure of the llama.cpp build is reported and only skips the tests that need it.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's numpy and torch must be there first (scripts/install_deps.sh): otherwise pip pulls a
# numpy that Debian's torch was not built against (llama-cpp-python depends on numpy), and
# torch's numpy bridge fails in the reference scripts.
if ! /usr/bin/python3 -c "import numpy, torch" 2>/dev/null; then
  echo "setup_python: Debian's python3-numpy / python3-torch are not importable: run scripts/install_deps.sh first" >&2
  exit 1
fi

if [ ! -x .venv/bin/python3 ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

# install_once REQUIREMENTS_FILE: pip-installs the file unless this exact file was installed.
install_once() {
  local req=$1 stamp=.venv/.installed-$(basename "$1")
  shift
  if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then return 0; fi
  echo "setup_python: installing $req"
  .venv/bin/python3 -m pip install --quiet --disable-pip-version-check "$@" -r "$req"
  cp "$req" "$stamp"
}

install_once scripts/python-requirements.txt
install_once scripts/python-requirements-nodeps.txt --no-deps

# llama.cpp is built for AVX2 + FMA + F16C, not for this CPU (llama.cpp's default, -march=native):
# - on a CPU with AMX (Intel Sapphire Rapids and later) a native build runs Q4_0 / Q4_1 / Q4_K
#   products through ggml's AMX code, which gives wrong results in this llama.cpp (perplexity
#   ~300 instead of ~20 on SmolLM2-135M Q4_1; ggml's own PR 16315 reports garbage with Q4_0 and
#   Q4_1 on AMX): the reference would fail loom for llama.cpp's bug;
# - the wheel is kept in pip's cache directory, which outlives the checkout: a native build made
#   on one machine (AVX-512, AMX) would stop with an illegal instruction on the next.
# The wheel lives in a folder of its own under pip's cache, named by version and build flags
# (pip's own wheel cache does not tell builds with different CMAKE_ARGS apart).
llamacpp_version=$(sed -n 's/^llama-cpp-python==//p' scripts/python-requirements-llamacpp.txt)
llamacpp_cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
llamacpp_stamp=".venv/.installed-llama-cpp-python-$llamacpp_version-avx2"
install_llamacpp() {
  local cache wheel_dir tmp
  cache=$(.venv/bin/python3 -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")
  wheel_dir="$cache/loom-llama-cpp-python-$llamacpp_version-avx2"
  if ! ls "$wheel_dir"/llama_cpp_python-"$llamacpp_version"-*.whl >/dev/null 2>&1; then
    echo "setup_python: building llama-cpp-python $llamacpp_version from source ($llamacpp_cmake_args; about 2 minutes on 2 cores)"
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/loom-llama-cpp-python.XXXXXX")
    if ! CMAKE_ARGS="$llamacpp_cmake_args" .venv/bin/python3 -m pip wheel --quiet \
           --disable-pip-version-check --no-deps --no-cache-dir -w "$tmp" \
           "llama-cpp-python==$llamacpp_version"; then
      rm -rf "$tmp"
      return 1
    fi
    rm -rf "$wheel_dir"
    mv "$tmp" "$wheel_dir"
  fi
  echo "setup_python: installing llama-cpp-python $llamacpp_version from $wheel_dir"
  .venv/bin/python3 -m pip install --quiet --disable-pip-version-check --force-reinstall \
    --no-deps "$wheel_dir"/llama_cpp_python-"$llamacpp_version"-*.whl &&
    .venv/bin/python3 -m pip install --quiet --disable-pip-version-check \
      "$wheel_dir"/llama_cpp_python-"$llamacpp_version"-*.whl
}
if [ ! -f "$llamacpp_stamp" ]; then
  if install_llamacpp; then
    rm -f .venv/.installed-llama-cpp-python-*
    touch "$llamacpp_stamp"
  else
    echo "setup_python: WARNING: llama-cpp-python could not be built; llama.cpp interop tests will be SKIPPED" >&2
  fi
fi

# llama.cpp's own converter, convert_hf_to_gguf.py with the gguf-py of the same llama.cpp: the
# reference for merged GGUF exports from Hugging Face folders (tests/interop/
# test_export_gguf_hf.py). Taken from the source archive of the llama-cpp-python pinned above,
# whose vendor/llama.cpp holds both, into .cache/llama.cpp-convert-VERSION. A failure only skips
# that test (loudly).
convert_dir=.cache/llama.cpp-convert-$llamacpp_version
if [ ! -f "$convert_dir/convert_hf_to_gguf.py" ]; then
  echo "setup_python: unpacking llama.cpp's convert_hf_to_gguf.py (llama-cpp-python $llamacpp_version source) into $convert_dir"
  mkdir -p .cache/pip-downloads
  tmp=$(mktemp -d .cache/llama.cpp-convert.XXXXXX)
  sdist=.cache/pip-downloads/llama_cpp_python-$llamacpp_version.tar.gz
  if { [ -f "$sdist" ] || .venv/bin/python3 -m pip download --quiet --disable-pip-version-check \
         --no-deps --no-binary :all: --no-build-isolation -d .cache/pip-downloads \
         "llama-cpp-python==$llamacpp_version"; } &&
     tar -xzf "$sdist" -C "$tmp" --strip-components=3 \
       "llama_cpp_python-$llamacpp_version/vendor/llama.cpp/convert_hf_to_gguf.py" \
       "llama_cpp_python-$llamacpp_version/vendor/llama.cpp/gguf-py"; then
    rm -rf "$convert_dir"
    mv "$tmp" "$convert_dir"
  else
    rm -rf "$tmp"
    echo "setup_python: WARNING: llama.cpp's convert_hf_to_gguf.py could not be unpacked; the test against it will be SKIPPED" >&2
  fi
fi
echo "setup_python: .venv ready ($(.venv/bin/python3 --version))"
