#!/usr/bin/env bash
# Installs the Debian packages loom builds and tests with. Idempotent: installs only what is
# missing, so a second run is fast.
set -euo pipefail

# ocl-icd-opencl-dev: Debian's oneDNN is built with its OpenCL GPU runtime, so dnnl-config.cmake
# finds OpenCL (headers + libOpenCL.so) before it defines DNNL::dnnl, even for CPU-only use.
packages=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-dev libdnnl-dev ocl-icd-opencl-dev libeigen3-dev libhdf5-dev zlib1g-dev
  libfmt-dev libcli11-dev nlohmann-json3-dev libyaml-cpp-dev libpcre2-dev
  libgtest-dev libbenchmark-dev
  python3 python3-venv python3-numpy python3-torch
  dict-foldoc dict-gcide dict-wn
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} Debian packages present"
  exit 0
fi

echo "install_deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
