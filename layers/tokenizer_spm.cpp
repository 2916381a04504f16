// SentencePiece-style BPE (GGUF "llama"): spaces become "▁", a "▁" goes in front of each text
// fragment when add_space_prefix is set, the text's UTF-8 characters are merged, and characters
// left without a token become <0xXX> byte tokens (byte fallback) or the unknown token.
//
// Merge order: GGUF stores a score per token, and the merge that makes the highest-scoring token
// goes first, leftmost among equal scores (llama.cpp's llm_tokenizer_spm, sentencepiece's
// bpe_model.cc). That is ranked BPE with rank = position of the merged token's score among the
// distinct scores in descending order, so the same MergeTable serves: every split of a token
// into two tokens becomes a pair. A tokenizer.json brings ranked merges instead, used as given.
// Like sentencepiece, only normal, user-defined and unused tokens take part in merging.
#include <fmt/format.h>

#include <algorithm>

#include "autograd/check.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"

namespace loom {

namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581 "▁"

bool merges_as_piece(TokenType t) {
  return t == TokenType::Normal || t == TokenType::UserDefined || t == TokenType::Unused;
}

}  // namespace

int tok::parse_byte_token(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int value = 0;
  for (char c : text.substr(3, 2)) {
    value *= 16;
    if (c >= '0' && c <= '9') {
      value += c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value += c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value += c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

void Tokenizer::Impl::build_spm() {
  for (int b = 0; b < 256; ++b) {
    const auto it = token_ids.find(fmt::format("<0x{:02X}>", b));
    byte_tokens[b] = it == token_ids.end() ? -1 : it->second;
  }

  if (!spec.merges.empty()) {
    build_ranked_merges();
  } else if (!spec.scores.empty()) {
    std::vector<float> distinct;
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
      if (merges_as_piece(spec.types[id])) distinct.push_back(spec.scores[id]);
    }
    std::sort(distinct.begin(), distinct.end(), std::greater<float>());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    const auto piece_id = [&](std::string_view text) -> int32_t {
      const auto it = token_ids.find(text);
      return it != token_ids.end() && merges_as_piece(spec.types[it->second]) ? it->second : -1;
    };
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
      if (!merges_as_piece(spec.types[id])) continue;
      const std::string_view text = spec.tokens[id];
      const auto rank =
          static_cast<int32_t>(std::lower_bound(distinct.begin(), distinct.end(), spec.scores[id],
                                                std::greater<float>()) -
                               distinct.begin());
      // Every split at a character boundary into two pieces is a pair that merges into this one.
      for (size_t k = tok::utf8_len_from_lead(text[0]); k < text.size();
           k += tok::utf8_len_from_lead(text[k])) {
        const int32_t left = piece_id(text.substr(0, k)), right = piece_id(text.substr(k));
        if (left >= 0 && right >= 0) merges.add(left, right, rank, static_cast<int32_t>(id));
      }
    }
    merges.finish();
  } else {
    fail(
        "a SentencePiece vocabulary needs token scores (tokenizer.ggml.scores) or merges, "
        "found neither");
  }

  pieces.resize(spec.tokens.size());
  for (size_t id = 0; id < spec.tokens.size(); ++id) {
    const std::string& text = spec.tokens[id];
    std::string& piece = pieces[id];
    switch (spec.types[id]) {
      case TokenType::Normal:
      case TokenType::Unused:
        for (size_t pos = 0; pos < text.size();) {
          if (text.compare(pos, kSpaceMarker.size(), kSpaceMarker) == 0) {
            piece += ' ';
            pos += kSpaceMarker.size();
          } else {
            piece += text[pos++];
          }
        }
        break;
      case TokenType::Byte: {
        const int byte = tok::parse_byte_token(text);
        if (byte < 0) {
          fail(fmt::format("token {} ('{}') has type byte, expected the form <0xXX>", id, text));
        }
        piece = std::string(1, static_cast<char>(byte));
        break;
      }
      default:
        piece = text;  // control, unknown and user-defined tokens stand for their text
    }
  }
}

void Tokenizer::Impl::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  std::string escaped;
  escaped.reserve(text.size() + text.size() / 4 + kSpaceMarker.size());
  if (spec.add_space_prefix) escaped += kSpaceMarker;
  for (char c : text) {
    if (c == ' ') {
      escaped += kSpaceMarker;
    } else {
      escaped += c;
    }
  }
  if (spec.ignore_merges) {  // tokenizer.json's ignore_merges: a whole-token fragment stays whole
    const auto it = token_ids.find(escaped);
    if (it != token_ids.end() && merges_as_piece(spec.types[it->second])) {
      out.push_back(it->second);
      return;
    }
  }
  // One symbol per character: its token, or -(offset + 1) when it has none (never merges).
  std::vector<int32_t> symbols;
  symbols.reserve(escaped.size());
  for (size_t pos = 0; pos < escaped.size();) {
    const size_t len = tok::utf8_len_from_lead(static_cast<unsigned char>(escaped[pos]));
    const auto it = token_ids.find(std::string_view(escaped).substr(pos, len));
    const bool known = it != token_ids.end() && merges_as_piece(spec.types[it->second]);
    symbols.push_back(known ? it->second : -1 - static_cast<int32_t>(pos));
    pos += len;
  }
  merges.merge(symbols);
  for (int32_t s : symbols) {
    if (s >= 0) {
      out.push_back(s);
      continue;
    }
    const size_t pos = static_cast<size_t>(-1 - s);
    const size_t len = tok::utf8_len_from_lead(static_cast<unsigned char>(escaped[pos]));
    const std::string_view ch = std::string_view(escaped).substr(pos, len);
    if (spec.byte_fallback) {
      for (char c : ch) {
        const int32_t b = byte_tokens[static_cast<unsigned char>(c)];
        if (b >= 0) {
          out.push_back(b);
        } else if (spec.unk_id >= 0) {
          out.push_back(spec.unk_id);
        } else {
          fail(
              fmt::format("character '{}' has no token, byte 0x{:02X} has no <0x{:02X}> token, "
                          "and there is no unknown token",
                          ch, static_cast<unsigned char>(c), static_cast<unsigned char>(c)));
        }
      }
    } else if (spec.unk_id >= 0) {
      out.push_back(spec.unk_id);
    } else {
      fail(fmt::format("character '{}' has no token and there is no unknown token", ch));
    }
  }
}

}  // namespace loom
