// Byte-level BPE (GGUF "gpt2"): the GPT-2 byte <-> character table, the ranked merge table and
// its two merge loops, and the byte-level encode of one text fragment.
//
// Speed: a word's symbols are token ids from the start (one per byte), merges are looked up by
// (left id, right id) in an open-addressing table, and short words (nearly all) use a plain scan
// over a rank array; only long words (runs of spaces, long numbers without digit splitting, base64
// blobs) pay for the heap.
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <queue>

#include "autograd/check.h"
#include "layers/tokenizer.h"
#include "layers/tokenizer_internal.h"

namespace loom {
namespace tok {

// ---- GPT-2 byte characters ---------------------------------------------------------------------

namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// get U+0100.. in byte order.
std::array<uint32_t, 256> make_byte_codepoints() {
  std::array<uint32_t, 256> cps{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    cps[b] = printable ? b : next++;
  }
  return cps;
}

const std::array<uint32_t, 256>& byte_codepoints() {
  static const std::array<uint32_t, 256> cps = make_byte_codepoints();
  return cps;
}

}  // namespace

const std::array<std::string, 256>& byte_chars() {
  static const std::array<std::string, 256> chars = [] {
    std::array<std::string, 256> out;
    for (int b = 0; b < 256; ++b) append_utf8(byte_codepoints()[b], out[b]);
    return out;
  }();
  return chars;
}

int byte_of_char(uint32_t cp) {
  static const std::vector<int16_t> inverse = [] {
    std::vector<int16_t> inv(512, -1);
    for (int b = 0; b < 256; ++b) inv[byte_codepoints()[b]] = static_cast<int16_t>(b);
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

// ---- merge table -------------------------------------------------------------------------------

namespace {

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

inline uint64_t hash_key(uint64_t key) {
  key ^= key >> 29;
  key *= 0xBF58476D1CE4E5B9ull;
  key ^= key >> 32;
  return key;
}

constexpr int32_t kNoRank = INT32_MAX;

}  // namespace

void MergeTable::add(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  LOOM_CHECK(left >= 0 && right >= 0 && merged >= 0, "merge ids must be >= 0: {} {} -> {}", left,
             right, merged);
  pending_.push_back(Slot{pair_key(left, right), MergeResult{rank, merged}});
}

void MergeTable::finish() {
  size_t capacity = 16;
  while (capacity < pending_.size() * 2) capacity *= 2;
  slots_.assign(capacity, Slot{kEmpty, MergeResult{kNoRank, -1}});
  mask_ = capacity - 1;
  count_ = 0;
  for (const Slot& s : pending_) {
    uint64_t i = hash_key(s.key) & mask_;
    while (slots_[i].key != kEmpty && slots_[i].key != s.key) i = (i + 1) & mask_;
    if (slots_[i].key == kEmpty) {
      slots_[i] = s;
      ++count_;
    } else if (s.value.rank < slots_[i].value.rank) {
      slots_[i].value = s.value;
    }
  }
  pending_.clear();
  pending_.shrink_to_fit();
}

const MergeResult* MergeTable::find(int32_t left, int32_t right) const {
  if (left < 0 || right < 0 || slots_.empty()) return nullptr;
  const uint64_t key = pair_key(left, right);
  uint64_t i = hash_key(key) & mask_;
  while (true) {
    const Slot& s = slots_[i];
    if (s.key == key) return &s.value;
    if (s.key == kEmpty) return nullptr;
    i = (i + 1) & mask_;
  }
}

void MergeTable::merge(std::vector<int32_t>& symbols) const {
  if (symbols.size() <= kMergeScanMaxSymbols) {
    merge_scan(symbols);
  } else {
    merge_heap(symbols);
  }
}

void MergeTable::merge_scan(std::vector<int32_t>& s) const {
  size_t n = s.size();
  if (n < 2) return;
  // ranks[i] / merged[i]: the merge of the pair (s[i], s[i+1]).
  MergeResult local[kMergeScanMaxSymbols];
  std::vector<MergeResult> heap_buffer;
  MergeResult* pairs = local;
  if (n - 1 > kMergeScanMaxSymbols) {
    heap_buffer.resize(n - 1);
    pairs = heap_buffer.data();
  }
  const auto lookup = [&](size_t i) {
    const MergeResult* r = find(s[i], s[i + 1]);
    pairs[i] = r ? *r : MergeResult{kNoRank, -1};
  };
  for (size_t i = 0; i + 1 < n; ++i) lookup(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (pairs[i].rank < pairs[best].rank) best = i;
    }
    if (pairs[best].rank == kNoRank) break;
    s[best] = pairs[best].merged;
    // Drop symbol best+1 and pair best+1 (its pair with best+2 is recomputed below).
    std::memmove(&s[best + 1], &s[best + 2], (n - best - 2) * sizeof(int32_t));
    if (best + 2 < n) {
      std::memmove(&pairs[best + 1], &pairs[best + 2], (n - best - 3) * sizeof(MergeResult));
    }
    --n;
    if (best + 1 < n) {
      lookup(best);
    }
    if (best > 0) lookup(best - 1);
  }
  s.resize(n);
}

void MergeTable::merge_heap(std::vector<int32_t>& s) const {
  const size_t n = s.size();
  if (n < 2) return;
  constexpr int32_t kDead = INT32_MIN;
  struct Node {
    int32_t id;
    int32_t prev, next;
  };
  std::vector<Node> nodes(n);
  for (size_t i = 0; i < n; ++i) {
    nodes[i] =
        Node{s[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  }
  struct Candidate {
    int32_t rank;
    int32_t pos;  // the left node; positions keep their order, so lower = further left
    int32_t left, right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto push = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t next = nodes[pos].next;
    if (next < 0) return;
    if (const MergeResult* r = find(nodes[pos].id, nodes[next].id)) {
      queue.push(Candidate{r->rank, pos, nodes[pos].id, nodes[next].id});
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Node& left = nodes[c.pos];
    // Stale when the left symbol was merged away or changed, or its right neighbour changed.
    if (left.id != c.left || left.next < 0 || nodes[left.next].id != c.right) continue;
    const MergeResult* r = find(c.left, c.right);
    Node& right = nodes[left.next];
    left.id = r->merged;
    right.id = kDead;
    left.next = right.next;
    if (left.next >= 0) nodes[left.next].prev = c.pos;
    push(left.prev);
    push(c.pos);
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = nodes[i].next) s[out++] = nodes[i].id;
  s.resize(out);
}

}  // namespace tok

// ---- byte-level tokenizer
// ------------------------------------------------------------------------

void Tokenizer::Impl::build_ranked_merges() {
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const auto& [a, b] = spec.merges[i];
    const auto ia = token_ids.find(a), ib = token_ids.find(b);
    const auto im = token_ids.find(a + b);
    if (ia == token_ids.end() || ib == token_ids.end() || im == token_ids.end()) {
      fail(fmt::format("merge {} ('{} {}'): '{}' is not a token of the vocabulary", i, a, b,
                       ia == token_ids.end()   ? a
                       : ib == token_ids.end() ? b
                                               : a + b));
    }
    merges.add(ia->second, ib->second, static_cast<int32_t>(i), im->second);
  }
  merges.finish();
}

void Tokenizer::Impl::build_byte_level() {
  const auto& chars = tok::byte_chars();
  for (int b = 0; b < 256; ++b) {
    const auto it = token_ids.find(chars[b]);
    byte_tokens[b] = it == token_ids.end() ? -1 : it->second;
  }

  if (spec.merges.empty()) fail("a byte-level BPE vocabulary needs merges, found none");
  build_ranked_merges();

  pieces.resize(spec.tokens.size());
  for (size_t id = 0; id < spec.tokens.size(); ++id) {
    const std::string& text = spec.tokens[id];
    const TokenType t = spec.types[id];
    if (t == TokenType::Control || t == TokenType::Unknown || t == TokenType::UserDefined) {
      pieces[id] = text;  // stored as written, not byte-mapped
      continue;
    }
    // Characters outside the byte table (only in odd vocabularies) decode to themselves, as the
    // Hugging Face ByteLevel decoder does.
    std::string& piece = pieces[id];
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = tok::utf8_valid_len(text, pos);
      if (len == 0) {
        piece += text[pos++];
        continue;
      }
      const int byte = tok::byte_of_char(tok::utf8_decode_at(text, pos));
      if (byte >= 0) {
        piece += static_cast<char>(byte);
      } else {
        piece.append(text, pos, len);
      }
      pos += len;
    }
  }

  if (spec.pre_regexes.empty()) {
    spec.pre_regexes = tok::find_pretokenizer(spec.pre_name, spec.source).regexes;
  }
  pre = std::make_unique<tok::PreTokenizer>(spec.pre_regexes, spec.source);
}

void Tokenizer::Impl::encode_byte_level(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string_view> words;
  words.reserve(text.size() / 4 + 1);
  pre->split(text, words);
  std::vector<int32_t> symbols;
  std::string mapped;
  for (std::string_view word : words) {
    if (spec.ignore_merges) {
      mapped.clear();
      for (char c : word) mapped += tok::byte_chars()[static_cast<unsigned char>(c)];
      const auto it = token_ids.find(mapped);
      if (it != token_ids.end()) {
        out.push_back(it->second);
        continue;
      }
    }
    symbols.resize(word.size());
    for (size_t i = 0; i < word.size(); ++i) {
      const unsigned char b = static_cast<unsigned char>(word[i]);
      // A byte without a token stays a negative symbol: it never merges.
      symbols[i] = byte_tokens[b] >= 0 ? byte_tokens[b] : -1 - static_cast<int32_t>(b);
    }
    merges.merge(symbols);
    for (int32_t id : symbols) {
      if (id < 0) {
        if (spec.unk_id < 0) {
          fail(
              fmt::format("byte 0x{:02X} has no token ('{}' is not in the vocabulary) and there "
                          "is no unknown token",
                          -1 - id, tok::byte_chars()[-1 - id]));
        }
        id = spec.unk_id;
      }
      out.push_back(id);
    }
  }
}

}  // namespace loom
