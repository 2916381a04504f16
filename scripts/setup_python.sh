#!/usr/bin/env bash
# Makes the repo's Python environment (.venv) for the interop tests and golden-file scripts:
# Debian's python3 with its system packages visible (numpy, python3-torch), plus the PyPI
# references in scripts/python-requirements.txt (and, without their dependencies,
# scripts/python-requirements-nodeps.txt), then llama.cpp (llama-cpp-python, built from
# source by pip, cached as a wheel) from scripts/python-requirements-llamacpp.txt. A failure of
# the llama.cpp build is reported and only skips the tests that need it. Idempotent.
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
if ! install_once scripts/python-requirements-llamacpp.txt; then
  echo "setup_python: WARNING: llama-cpp-python could not be built; llama.cpp interop tests will be SKIPPED" >&2
fi

# llama.cpp's own converter, convert_hf_to_gguf.py with the gguf-py of the same llama.cpp: the
# reference for merged GGUF exports from Hugging Face folders (tests/interop/
# test_export_gguf_hf.py). Taken from the source archive of the llama-cpp-python pinned above,
# whose vendor/llama.cpp holds both, into .cache/llama.cpp-convert-VERSION. A failure only skips
# that test (loudly).
llamacpp_version=$(sed -n 's/^llama-cpp-python==//p' scripts/python-requirements-llamacpp.txt)
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
