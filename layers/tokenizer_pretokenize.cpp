// Pre-tokenizers of byte-level BPE vocabularies: the regexes each `tokenizer.ggml.pre` name stands
// for (as llama.cpp's llama-vocab.cpp defines them), and the PCRE2 splitter that applies them.
//
// Regexes are applied in turn: each one splits every piece into its matches and the text between
// them, as llama.cpp's unicode_regex_split() and the Hugging Face Split pre-tokenizer with
// behavior "Isolated" do. "smollm" is `\p{N}` (each digit alone, = HF Digits(individual_digits))
// and then the GPT-2 regex (= HF ByteLevel(use_regex)).
//
// `\s` / `\S` are rewritten to the Unicode White_Space set before compiling: PCRE2's own `\s`
// (with UCP) also takes U+180E MONGOLIAN VOWEL SEPARATOR, which is no longer White_Space; llama.cpp
// and the regex engine of Hugging Face `tokenizers` use White_Space (the golden cases check it).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include "autograd/check.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"

namespace loom {
namespace tok {

namespace {

// GPT-2's regex, with the trailing `\s+` of tokenizer.json (llama.cpp drops it; the gap it would
// match is kept as a piece either way).
const char* const kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama 3's, with llama.cpp's case-insensitive contractions spelled out ([sS] rather than (?i:s),
// which would also match U+017F under Unicode case folding).
const char* const kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen 2's: Llama 3's with single digits.
const char* const kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Unicode White_Space, as the body of a character class.
const char* const kWhiteSpaceClass =
    R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

std::string rewrite_whitespace_classes(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      ++i;
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceClass) : fmt::format("[{}]", kWhiteSpaceClass);
      } else if (e == 'S' && !in_class) {
        out += fmt::format("[^{}]", kWhiteSpaceClass);
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

const std::vector<PretokenizerPreset>& pretokenizer_presets() {
  static const std::vector<PretokenizerPreset> presets = {
      {{"default"},
       {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"},
       false,
       false},
      {{"gpt2", "gpt-2", "phi-2", "mpt", "olmo"}, {kGpt2}, false, false},
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
       {R"(\p{N})", kGpt2},
       false,
       false},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {kLlama3}, true, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3}, false, false},
      {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"}, {kQwen2}, false, false},
  };
  return presets;
}

std::string_view gpt2_regex() {
  return kGpt2;
}

const PretokenizerPreset& find_pretokenizer(std::string_view name, std::string_view source) {
  for (const PretokenizerPreset& p : pretokenizer_presets()) {
    for (const std::string& n : p.names) {
      if (n == name) return p;
    }
  }
  throw Error(
      fmt::format("tokenizer ({}): unknown pre-tokenizer '{}' (tokenizer.ggml.pre); "
                  "supported: {}",
                  source, name, join(supported_pretokenizers(), ", ")));
}

// ---- PCRE2 splitter ----------------------------------------------------------------------------

struct PreTokenizer::Regex {
  std::string pattern;  // as given, for errors
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Regex() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer(const std::vector<std::string>& regexes, std::string_view source) {
  for (const std::string& pattern : regexes) {
    auto r = std::make_unique<Regex>();
    r->pattern = pattern;
    const std::string rewritten = rewrite_whitespace_classes(pattern);
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    r->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                            PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
    if (r->code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      throw Error(fmt::format(
          "tokenizer ({}): pre-tokenizer regex '{}' does not compile: {} "
          "(at offset {} of the rewritten pattern '{}')",
          source, pattern, reinterpret_cast<const char*>(message), error_offset, rewritten));
    }
    // JIT is an optimisation: without it (an unsupported CPU) the interpreter runs.
    r->jit = pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE) == 0;
    regexes_.push_back(std::move(r));
  }
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  if (text.empty()) return;
  if (regexes_.empty()) {
    pieces.push_back(text);
    return;
  }
  std::vector<std::string_view> current{text}, next;
  for (size_t k = 0; k < regexes_.size(); ++k) {
    const Regex& re = *regexes_[k];
    std::vector<std::string_view>& out = k + 1 == regexes_.size() ? pieces : next;
    if (&out == &next) next.clear();
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re.code, nullptr);
    LOOM_CHECK(md != nullptr, "pcre2_match_data_create_from_pattern failed (out of memory)");
    for (std::string_view piece : current) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t offset = 0, kept = 0;  // kept: end of what has been emitted
      while (offset < piece.size()) {
        const int rc = re.jit ? pcre2_jit_match(re.code, subject, piece.size(), offset,
                                                PCRE2_NO_UTF_CHECK, md, nullptr)
                              : pcre2_match(re.code, subject, piece.size(), offset,
                                            PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          PCRE2_UCHAR message[256];
          pcre2_get_error_message(rc, message, sizeof(message));
          pcre2_match_data_free(md);
          throw Error(
              fmt::format("tokenizer: pre-tokenizer regex '{}' failed on a {}-byte piece: "
                          "{}",
                          re.pattern, piece.size(), reinterpret_cast<const char*>(message)));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t start = ov[0], end = ov[1];
        if (end == start) {  // an empty match splits nothing; step over one character
          if (start >= piece.size()) break;
          offset = start + utf8_len_from_lead(static_cast<unsigned char>(piece[start]));
          continue;
        }
        if (start > kept) out.push_back(piece.substr(kept, start - kept));
        out.push_back(piece.substr(start, end - start));
        kept = offset = end;
      }
      if (kept < piece.size()) out.push_back(piece.substr(kept));
    }
    pcre2_match_data_free(md);
    if (&out == &next) current.swap(next);
  }
}

}  // namespace tok

std::vector<std::string> supported_pretokenizers() {
  std::vector<std::string> names;
  for (const auto& p : tok::pretokenizer_presets()) {
    names.insert(names.end(), p.names.begin(), p.names.end());
  }
  return names;
}

}  // namespace loom
