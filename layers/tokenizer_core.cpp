// The Tokenizer itself: checking a TokenizerSpec, the special-token split of the text, the
// encode / decode drivers common to both kinds, accessors, and the UTF-8 helpers.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "autograd/check.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"
#include "layers/unicode_nfc.h"

namespace loom {

std::string_view token_type_name(TokenType t) {
  switch (t) {
    case TokenType::Normal:
      return "normal";
    case TokenType::Unknown:
      return "unknown";
    case TokenType::Control:
      return "control";
    case TokenType::UserDefined:
      return "user-defined";
    case TokenType::Unused:
      return "unused";
    case TokenType::Byte:
      return "byte";
  }
  return "invalid";
}

std::string_view tokenizer_kind_name(TokenizerKind k) {
  return k == TokenizerKind::ByteLevelBpe ? "gpt2" : "llama";
}

// ---- UTF-8 ------------------------------------------------------------------------------------

namespace tok {

size_t utf8_valid_len(std::string_view text, size_t pos, size_t* bad_len) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char c = byte(pos);
  if (c < 0x80) return 1;
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte (Unicode Table 3-7)
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlong forms
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // no overlong forms
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    if (bad_len) *bad_len = 1;
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    const bool ok =
        pos + k < text.size() && (k == 1 ? (byte(pos + k) >= lo && byte(pos + k) <= hi)
                                         : (byte(pos + k) >= 0x80 && byte(pos + k) <= 0xBF));
    if (!ok) {
      if (bad_len) *bad_len = k;
      return 0;
    }
  }
  return len;
}

uint32_t utf8_decode_at(std::string_view text, size_t pos) {
  const auto b = [&](size_t i) {
    return static_cast<uint32_t>(static_cast<unsigned char>(text[pos + i]));
  };
  const uint32_t c = b(0);
  if (c < 0x80) return c;
  if (c < 0xE0) return ((c & 0x1F) << 6) | (b(1) & 0x3F);
  if (c < 0xF0) return ((c & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((c & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace tok

size_t find_invalid_utf8(std::string_view text) {
  size_t pos = 0;
  const size_t n = text.size();
  while (pos < n) {
    // Eight ASCII bytes at a time: the common case in any corpus.
    if (pos + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, text.data() + pos, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        pos += 8;
        continue;
      }
    }
    const size_t len = tok::utf8_valid_len(text, pos);
    if (len == 0) return pos;
    pos += len;
  }
  return std::string_view::npos;
}

std::string replace_invalid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t bad = 0;
    const size_t len = tok::utf8_valid_len(text, pos, &bad);
    if (len > 0) {
      out.append(text.substr(pos, len));
      pos += len;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal invalid subpart
      pos += bad;
    }
  }
  return out;
}

namespace {

std::string describe_invalid_utf8(std::string_view text, size_t pos) {
  size_t bad = 0;
  tok::utf8_valid_len(text, pos, &bad);
  std::string bytes;
  for (size_t i = pos; i < std::min(text.size(), pos + 4); ++i) {
    bytes += fmt::format("{}{:02X}", bytes.empty() ? "" : " ", static_cast<unsigned char>(text[i]));
  }
  const unsigned char lead = static_cast<unsigned char>(text[pos]);
  if (bad == 1 && (lead < 0xC2 || lead > 0xF4)) {
    return fmt::format(
        "byte 0x{:02X} at offset {} cannot start a UTF-8 character (bytes there: {})", lead, pos,
        bytes);
  }
  return fmt::format(
      "the UTF-8 sequence at offset {} is cut short or malformed after {} byte(s) "
      "(bytes there: {})",
      pos, bad, bytes);
}

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

// ---- building ---------------------------------------------------------------------------------

void Tokenizer::Impl::fail(const std::string& what) const {
  throw Error(
      fmt::format("tokenizer ({}): {}", spec.source.empty() ? "<memory>" : spec.source, what));
}

Tokenizer::Impl::Impl(TokenizerSpec s) : spec(std::move(s)) {
  const size_t n = spec.tokens.size();
  if (n == 0) fail("the vocabulary is empty, expected at least one token");
  if (n > static_cast<size_t>(INT32_MAX)) fail(fmt::format("{} tokens is too many", n));
  if (spec.types.empty()) spec.types.assign(n, TokenType::Normal);
  if (spec.types.size() != n) {
    fail(fmt::format("{} token types for {} tokens, expected one per token", spec.types.size(), n));
  }
  for (size_t i = 0; i < n; ++i) {
    const auto t = static_cast<int>(spec.types[i]);
    if (t < 1 || t > 6) {
      fail(
          fmt::format("token {} ('{}') has type {}, expected 1..6 (normal, unknown, control, "
                      "user-defined, unused, byte)",
                      i, spec.tokens[i], t));
    }
  }
  if (!spec.scores.empty() && spec.scores.size() != n) {
    fail(fmt::format("{} token scores for {} tokens, expected one per token", spec.scores.size(),
                     n));
  }
  for (auto [name, id] : {std::pair<const char*, int32_t>{"BOS", spec.bos_id},
                          {"EOS", spec.eos_id},
                          {"PAD", spec.pad_id},
                          {"UNK", spec.unk_id}}) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      fail(fmt::format("the {} token id is {}, expected -1 (none) or 0..{}", name, id, n - 1));
    }
  }
  if (spec.add_bos && spec.bos_id < 0) fail("add_bos is set but the vocabulary has no BOS token");
  if (spec.add_eos && spec.eos_id < 0) fail("add_eos is set but the vocabulary has no EOS token");
  for (auto* flags : {&spec.special_lstrip, &spec.special_rstrip}) {
    if (!flags->empty() && flags->size() != n) {
      fail(fmt::format("{} special lstrip/rstrip flags for {} tokens, expected one per token",
                       flags->size(), n));
    }
  }

  // A text stored twice maps to its last id, as in llama.cpp.
  token_ids.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) token_ids[spec.tokens[i]] = static_cast<int32_t>(i);

  byte_tokens.fill(-1);
  if (spec.kind == TokenizerKind::ByteLevelBpe) {
    build_byte_level();
  } else {
    build_spm();
  }
  build_specials();
}

void Tokenizer::Impl::build_specials() {
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    const TokenType t = spec.types[i];
    if (t != TokenType::Control && t != TokenType::Unknown && t != TokenType::UserDefined) {
      continue;
    }
    const std::string& text = spec.tokens[i];
    // An empty or non-UTF-8 text could never be written in (valid) input.
    if (text.empty() || find_invalid_utf8(text) != std::string_view::npos) continue;
    tok::SpecialText st{text, static_cast<int32_t>(i), t != TokenType::UserDefined,
                        !spec.special_lstrip.empty() && spec.special_lstrip[i] != 0,
                        !spec.special_rstrip.empty() && spec.special_rstrip[i] != 0};
    specials[static_cast<unsigned char>(text[0])].push_back(std::move(st));
  }
  for (auto& bucket : specials) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const auto& a, const auto& b) { return a.text.size() > b.text.size(); });
  }
}

void Tokenizer::Impl::encode_fragment(std::string_view text, std::vector<int32_t>& out) const {
  std::string normalized;  // as the tokenizer.json normalizer has it (after special tokens)
  if (spec.normalize_nfc && !nfc_trivially_stable(text)) {
    normalized = nfc(text);
    text = normalized;
  }
  if (spec.kind == TokenizerKind::ByteLevelBpe) {
    encode_byte_level(text, out);
  } else {
    encode_spm(text, out);
  }
}

// ---- Tokenizer --------------------------------------------------------------------------------

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<const Impl>(std::move(spec))) {}
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  encode_append(text, add_special, parse_special, ids);
  return ids;
}

void Tokenizer::encode_append(std::string_view text, bool add_special, bool parse_special,
                              std::vector<int32_t>& out) const {
  const Impl& im = *impl_;
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    im.fail(
        fmt::format("the text to encode is not valid UTF-8: {}; clean it first, e.g. with "
                    "replace_invalid_utf8()",
                    describe_invalid_utf8(text, bad)));
  }
  if (add_special && im.spec.add_bos) out.push_back(im.spec.bos_id);

  // Split the text at special tokens (leftmost-longest); encode the text between them.
  const size_t n = text.size();
  size_t fragment_start = 0;
  size_t pos = 0;
  while (pos < n) {
    const auto& candidates = im.specials[static_cast<unsigned char>(text[pos])];
    const tok::SpecialText* hit = nullptr;
    for (const tok::SpecialText& c : candidates) {
      if (c.needs_parse_special && !parse_special) continue;
      if (text.compare(pos, c.text.size(), c.text) == 0) {
        hit = &c;
        break;
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    size_t fragment_end = pos;
    if (hit->lstrip) {
      while (fragment_end > fragment_start && is_ascii_space(text[fragment_end - 1])) {
        --fragment_end;
      }
    }
    if (fragment_end > fragment_start) {
      im.encode_fragment(text.substr(fragment_start, fragment_end - fragment_start), out);
    }
    out.push_back(hit->id);
    pos += hit->text.size();
    if (hit->rstrip) {
      while (pos < n && is_ascii_space(text[pos])) ++pos;
    }
    fragment_start = pos;
  }
  if (fragment_start < n) im.encode_fragment(text.substr(fragment_start), out);

  if (add_special && im.spec.add_eos) out.push_back(im.spec.eos_id);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool render_special) const {
  const Impl& im = *impl_;
  std::string out;
  out.reserve(ids.size() * 4);
  // SPM: encode() put a "▁" in front of every text fragment, i.e. at the start and after each
  // special token; the space it decodes to comes off there.
  const bool strip_prefix =
      im.spec.kind == TokenizerKind::SentencePieceBpe && im.spec.add_space_prefix;
  bool after_special = true;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size()) {
      im.fail(fmt::format("cannot decode token id {} at position {}: expected 0..{}", id, i,
                          vocab_size() - 1));
    }
    const TokenType t = im.spec.types[id];
    if (t == TokenType::Control || t == TokenType::Unknown) {
      if (render_special) out += im.spec.tokens[id];
      after_special = true;
      continue;
    }
    const std::string& piece = im.pieces[id];
    if (strip_prefix && after_special && t != TokenType::UserDefined && !piece.empty() &&
        piece[0] == ' ') {
      out.append(piece, 1);
    } else {
      out += piece;
    }
    after_special = t == TokenType::UserDefined;
  }
  return out;
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->spec.tokens.size());
}

const std::string& Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    impl_->fail(fmt::format("token id {} is out of range: expected 0..{}", id, vocab_size() - 1));
  }
  return impl_->spec.tokens[id];
}

std::string Tokenizer::token_piece(int32_t id) const {
  token_text(id);  // range check
  const TokenType t = impl_->spec.types[id];
  if (t == TokenType::Control || t == TokenType::Unknown) return impl_->spec.tokens[id];
  return impl_->pieces[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  token_text(id);
  return impl_->spec.types[id];
}

float Tokenizer::token_score(int32_t id) const {
  token_text(id);
  return impl_->spec.scores.empty() ? 0.0f : impl_->spec.scores[id];
}

int32_t Tokenizer::find_token(std::string_view text) const {
  const auto it = impl_->token_ids.find(text);
  return it == impl_->token_ids.end() ? -1 : it->second;
}

int32_t Tokenizer::bos_id() const {
  return impl_->spec.bos_id;
}
int32_t Tokenizer::eos_id() const {
  return impl_->spec.eos_id;
}
int32_t Tokenizer::pad_id() const {
  return impl_->spec.pad_id;
}
int32_t Tokenizer::unk_id() const {
  return impl_->spec.unk_id;
}
bool Tokenizer::add_bos() const {
  return impl_->spec.add_bos;
}
bool Tokenizer::add_eos() const {
  return impl_->spec.add_eos;
}
TokenizerKind Tokenizer::kind() const {
  return impl_->spec.kind;
}
const std::string& Tokenizer::pre_name() const {
  return impl_->spec.pre_name;
}
const std::string& Tokenizer::chat_template() const {
  return impl_->spec.chat_template;
}
const std::string& Tokenizer::source() const {
  return impl_->spec.source;
}
const TokenizerSpec& Tokenizer::spec() const {
  return impl_->spec;
}

}  // namespace loom
