#!/usr/bin/env bash
# Makes the repo's Python environment (.venv) for the interop tests and golden-file scripts:
# Debian's python3 with its system packages visible (numpy; python3-torch where installed),
# plus the PyPI references listed in scripts/python-requirements.txt. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python3 ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || ! cmp -s scripts/python-requirements.txt "$stamp"; then
  .venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r scripts/python-requirements.txt
  cp scripts/python-requirements.txt "$stamp"
fi
echo "setup_python: .venv ready ($(.venv/bin/python3 --version))"
