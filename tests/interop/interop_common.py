"""What every interop test shares: how it reports a skip (exit 77, which ctest shows as SKIPPED,
never passed) or a failure, and where the source tree, the build and the golden files are.

The test scripts import it from their own folder (Python puts a script's folder on sys.path).
It is not a test itself: CMake registers only tests/interop/test_*.py.
"""
import os
import sys

SOURCE_DIR = os.environ.get("LOOM_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("LOOM_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
GOLDEN_DIR = os.path.join(SOURCE_DIR, "tests", "golden")

# peft pins a torch newer than Debian's 1.13.0a0 pre-release; installed without its dependencies.
PEFT_INSTALL_HINT = ("install it without dependencies (pip would otherwise replace Debian's torch "
                     "1.13.0a0): .venv/bin/python3 -m pip install --no-deps peft==0.15.2 "
                     "accelerate==0.34.2")


def skip(reason):
    """Ends the test as SKIPPED, loudly: a reference that is missing is not a pass."""
    msg = f"SKIPPED: {reason}"
    print("=" * len(msg), msg, "=" * len(msg), sep="\n", file=sys.stderr)
    sys.exit(77)


def fail(reason):
    print(f"FAIL: {reason}", file=sys.stderr)
    sys.exit(1)
