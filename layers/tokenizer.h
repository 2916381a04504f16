// Tokenizers of Llama-family models: text <-> token ids.
//
// Two kinds, as GGUF's `tokenizer.ggml.model` names them:
//   "gpt2"  byte-level BPE: the text is split by the pre-tokenizer regexes named by
//           `tokenizer.ggml.pre` (tokenizer_pretokenize.cpp), each piece's bytes become the
//           GPT-2 byte characters (a space is "Ġ"), and ranked merges join them
//           (tokenizer_bpe.cpp).
//   "llama" SentencePiece-style BPE: spaces become "▁" (U+2581), a "▁" is put in front of the
//           text when add_space_prefix is set, UTF-8 characters are merged by the score of the
//           merged piece (highest first), and characters with no token fall back to <0xXX> byte
//           tokens (tokenizer_spm.cpp).
// Both are loaded from a GGUF file's tokenizer.* metadata (tokenizer_gguf.cpp) or from a Hugging
// Face tokenizer.json (tokenizer_hf_json.cpp); both follow llama.cpp's rules, which the Hugging
// Face `tokenizers` package and sentencepiece agree with
// (tests/interop/test_tokenizer_vs_reference.py).
//
// Special tokens: a token of type Control or Unknown (<|im_start|>, <s>, <unk>) is recognised in
// the text only when encode() is asked to parse specials; a UserDefined token is always
// recognised; otherwise such text is tokenized as ordinary text. Matching is leftmost-longest.
//
// Input text must be valid UTF-8: encode() throws loom::Error naming the byte offset of the first
// invalid byte. Callers that want to carry on instead clean the text with replace_invalid_utf8().
// decode() returns raw bytes; ids cut in the middle of a character give a partial UTF-8 sequence.
//
// A Tokenizer is immutable after loading; encode() and decode() are safe to call from many
// threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loom {

class GgufFile;

// The values of GGUF's tokenizer.ggml.token_type (llama.cpp's llama_token_type).
enum class TokenType : uint8_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};
std::string_view token_type_name(TokenType t);  // "normal", "control", ...

enum class TokenizerKind : uint8_t {
  ByteLevelBpe,      // GGUF "gpt2"
  SentencePieceBpe,  // GGUF "llama"
};
std::string_view tokenizer_kind_name(TokenizerKind k);  // "gpt2", "llama"

// Everything a tokenizer is built from; the loaders fill it, tests may fill it by hand.
struct TokenizerSpec {
  std::string source;  // where it came from, named in errors ("models/x.gguf")
  TokenizerKind kind = TokenizerKind::ByteLevelBpe;
  std::vector<std::string> tokens;  // id -> text as stored (byte-level: "Ġthe"; SPM: "▁the")
  std::vector<TokenType> types;     // empty: every token Normal
  std::vector<float> scores;        // SPM merge priority of each token (higher merges first)
  // Ranked merges (first = merged first). Byte-level BPE needs them; SPM uses them when given
  // (tokenizer.json) and the scores otherwise (GGUF).
  std::vector<std::pair<std::string, std::string>> merges;
  // Byte-level BPE pre-tokenizer: the regexes applied in turn, each splitting every piece into
  // its matches and the text between them. pre_name is what errors and pre_name() show.
  std::string pre_name = "default";
  std::vector<std::string> pre_regexes;
  bool ignore_merges = false;    // a pre-tokenized piece that is a whole token is kept whole
  bool normalize_nfc = false;    // text between special tokens is put in Unicode NFC first
  bool add_space_prefix = true;  // SPM: "▁" in front of each text fragment
  bool byte_fallback = true;     // SPM: unknown characters become <0xXX> tokens (else unk)
  int32_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;  // -1: none
  bool add_bos = false, add_eos = false;  // what encode(..., add_special=true) adds
  // Per-token: a matched special token also swallows the whitespace on its left / right
  // (tokenizer.json lstrip / rstrip). Empty: none do.
  std::vector<uint8_t> special_lstrip, special_rstrip;
  std::string chat_template;  // tokenizer.chat_template (Jinja), "" if none
};

class Tokenizer {
 public:
  // Checks the spec (ids in range, merges made of known tokens, ...) and builds the tables;
  // throws loom::Error naming spec.source and the offending token or merge.
  explicit Tokenizer(TokenizerSpec spec);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // add_special: put BOS / EOS around the ids when the model asks for them (add_bos / add_eos).
  // parse_special: recognise Control / Unknown tokens written in the text.
  std::vector<int32_t> encode(std::string_view text, bool add_special = false,
                              bool parse_special = false) const;
  // Same, appending to `out` (no reallocation churn when tokenizing a corpus).
  void encode_append(std::string_view text, bool add_special, bool parse_special,
                     std::vector<int32_t>& out) const;

  // The bytes the ids stand for. render_special = false leaves out Control / Unknown tokens.
  // SPM: the "▁" that encode() puts in front of a text fragment is taken off again.
  std::string decode(std::span<const int32_t> ids, bool render_special = true) const;

  int32_t vocab_size() const;
  const std::string& token_text(int32_t id) const;  // as stored: "Ġthe", "▁the", "<0x0A>"
  std::string token_piece(int32_t id) const;        // the bytes it decodes to on its own
  TokenType token_type(int32_t id) const;
  float token_score(int32_t id) const;              // 0 when the spec had no scores
  int32_t find_token(std::string_view text) const;  // id of the token stored as `text`, or -1

  int32_t bos_id() const;  // -1: none
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;
  bool add_bos() const;
  bool add_eos() const;
  TokenizerKind kind() const;
  const std::string& pre_name() const;
  const std::string& chat_template() const;
  const std::string& source() const;
  // Everything the tokenizer was built from (vocabulary, types, merges, pre-tokenizer regexes).
  const TokenizerSpec& spec() const;

  struct Impl;  // tokenizer_internal.h

 private:
  std::unique_ptr<const Impl> impl_;
};

// From a GGUF file's tokenizer.* keys. Errors name the file and the key; an unknown
// tokenizer.ggml.model or tokenizer.ggml.pre lists the supported ones.
std::unique_ptr<Tokenizer> load_tokenizer(const GgufFile& file);

// From a Hugging Face tokenizer.json (model.type "BPE"; pre_tokenizer ByteLevel, Digits, Split
// (Isolated), Metaspace, or a Sequence of them; normalizer NFC (Qwen2), Prepend / Replace for
// SPM-style vocabularies; added_tokens). A tokenizer_config.json next to it, when present, gives
// the BOS / EOS / PAD / UNK tokens, add_bos_token / add_eos_token and the chat template; a
// chat_template.jinja next to it, when present, the chat template (as transformers reads it).
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path);

// Names accepted as tokenizer.ggml.pre, and the regexes each stands for.
std::vector<std::string> supported_pretokenizers();

// Byte offset of the first byte that is not part of valid UTF-8 (overlong forms, surrogates and
// code points above U+10FFFF are invalid), or std::string_view::npos.
size_t find_invalid_utf8(std::string_view text);
// The text with each maximal invalid subsequence replaced by U+FFFD (as Python's
// bytes.decode("utf-8", "replace") and the WHATWG decoder do).
std::string replace_invalid_utf8(std::string_view text);

}  // namespace loom
