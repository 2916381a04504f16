// Shared pieces of the tokenizer implementation (tokenizer_*.cpp); not part of the public API.
// Tests include it to check the fast merge loop against the plain one.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "layers/tokenizer.h"

namespace loom::tok {

// "a, b, c" (fmt::join trips GCC 12's -Wstringop-overflow at -O3).
inline std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += sep;
    out += items[i];
  }
  return out;
}

// ---- UTF-8 (tokenizer_core.cpp) ---------------------------------------------------------------

// Length of the valid UTF-8 sequence starting at text[pos], or 0 when text[pos] starts no valid
// sequence; *bad_len (if given) is then the length of the maximal invalid subpart (>= 1).
size_t utf8_valid_len(std::string_view text, size_t pos, size_t* bad_len = nullptr);
// Length implied by a lead byte (1 for bytes that are no lead byte); for text already checked.
inline size_t utf8_len_from_lead(unsigned char c) {
  return c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
}
uint32_t utf8_decode_at(std::string_view text, size_t pos);  // for valid text
void append_utf8(uint32_t cp, std::string& out);

// ---- GPT-2 byte <-> character mapping (tokenizer_bpe.cpp) ------------------------------------

// The printable character GPT-2 uses for each byte, as UTF-8 ("Ġ" for 0x20).
const std::array<std::string, 256>& byte_chars();
// The byte a GPT-2 byte character stands for, or -1.
int byte_of_char(uint32_t cp);

// ---- ranked pair merges (tokenizer_bpe.cpp) --------------------------------------------------

struct MergeResult {
  int32_t rank;    // lower merges first
  int32_t merged;  // the id of the joined token
};

// (left id, right id) -> (rank, merged id) in an open-addressing table. merge() applies the
// merges to a word's symbols the way BPE does: repeatedly join the adjacent pair of lowest rank,
// leftmost first among equal ranks, until no pair has a merge.
class MergeTable {
 public:
  // When the pair is already present, the lower rank is kept.
  void add(int32_t left, int32_t right, int32_t rank, int32_t merged);
  void finish();  // call once after the last add(); builds the hash table
  const MergeResult* find(int32_t left, int32_t right) const;
  size_t size() const { return count_; }

  // In place. Symbols < 0 stand for characters with no token: they never merge.
  void merge(std::vector<int32_t>& symbols) const;
  // The two loops merge() picks between by word length: a scan over a rank array for short
  // words, a heap over a linked list for long ones. Same results; public for the tests.
  void merge_scan(std::vector<int32_t>& symbols) const;
  void merge_heap(std::vector<int32_t>& symbols) const;

 private:
  struct Slot {
    uint64_t key;
    MergeResult value;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  std::vector<Slot> pending_;
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
  size_t count_ = 0;
};

// Words at most this long (in symbols) take merge_scan().
inline constexpr size_t kMergeScanMaxSymbols = 96;

// "<0x0A>" -> 10; -1 when the text is not a SentencePiece byte token (tokenizer_spm.cpp).
int parse_byte_token(std::string_view text);

// ---- pre-tokenizer (tokenizer_pretokenize.cpp) -----------------------------------------------

struct PretokenizerPreset {
  std::vector<std::string> names;  // tokenizer.ggml.pre values
  std::vector<std::string> regexes;
  bool ignore_merges = false;
  bool add_bos = false;  // llama.cpp's default when the file has no add_bos_token
};
const std::vector<PretokenizerPreset>& pretokenizer_presets();
// GPT-2's split regex, which the Hugging Face ByteLevel pre-tokenizer applies with use_regex.
std::string_view gpt2_regex();
// Throws loom::Error naming `source` and listing the supported names.
const PretokenizerPreset& find_pretokenizer(std::string_view name, std::string_view source);

// Regexes (PCRE2, UTF-8 + Unicode properties, JIT-compiled) applied in turn: each splits every
// piece into its matches and the text between them (HF "Isolated").
class PreTokenizer {
 public:
  PreTokenizer(const std::vector<std::string>& regexes, std::string_view source);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  bool empty() const { return regexes_.empty(); }
  // Appends the pieces of `text` (valid UTF-8) to `pieces`, in order, covering all of it.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;

 private:
  struct Regex;
  std::vector<std::unique_ptr<Regex>> regexes_;
};

// ---- the tokenizer's state (tokenizer_core.cpp) ----------------------------------------------

// One token recognised in raw text (special tokens).
struct SpecialText {
  std::string text;
  int32_t id;
  bool needs_parse_special;  // Control / Unknown; UserDefined tokens match always
  bool lstrip, rstrip;
};

}  // namespace loom::tok

namespace loom {

struct Tokenizer::Impl {
  TokenizerSpec spec;
  std::unordered_map<std::string_view, int32_t> token_ids;  // views into spec.tokens
  std::vector<std::string> pieces;  // decoded bytes of each token on its own
  tok::MergeTable merges;
  std::unique_ptr<tok::PreTokenizer> pre;  // byte-level BPE only
  // Byte-level: the token of each byte's GPT-2 character. SPM: the <0xXX> token of each byte.
  // -1 where the vocabulary has none.
  std::array<int32_t, 256> byte_tokens{};
  // Special tokens by first byte, longest first.
  std::array<std::vector<tok::SpecialText>, 256> specials;

  explicit Impl(TokenizerSpec s);

  // One fragment of text between special tokens; appends its ids.
  void encode_fragment(std::string_view text, std::vector<int32_t>& out) const;
  void encode_byte_level(std::string_view text, std::vector<int32_t>& out) const;
  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;

  // Builders used by the constructor.
  void build_byte_level();     // tokenizer_bpe.cpp
  void build_ranked_merges();  // spec.merges -> merges (tokenizer_bpe.cpp)
  void build_spm();            // tokenizer_spm.cpp
  void build_specials();
  [[noreturn]] void fail(const std::string& what) const;  // "tokenizer (<source>): <what>"
};

}  // namespace loom
