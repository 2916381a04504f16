// Parallel tokenization of documents into flat token / mask arrays, and the tokenizer fingerprint.
#include "data/tokenize.h"

#include <fmt/format.h>
#include <omp.h>

#include <bit>
#include <exception>
#include <mutex>

#include "autograd/check.h"
#include "data/hash.h"
#include "layers/tokenizer.h"

namespace loom {
namespace {

// Documents are handed out in blocks: big enough to amortise scheduling, small enough that a
// run of long documents does not leave one thread working alone at the end.
constexpr size_t kDocsPerBlock = 64;

struct Block {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> trained;  // one byte per token
  std::vector<uint64_t> lengths;
};

void tokenize_block(const SourceDocuments& docs, size_t first, size_t last,
                    const Tokenizer& tokenizer, const std::string& what, Block& out) {
  for (size_t d = first; d < last; ++d) {
    const Document& doc = docs.documents[d];
    const size_t before = out.tokens.size();
    for (const Segment& seg : doc.segments) {
      try {
        tokenizer.encode_append(seg.text, false, seg.parse_special, out.tokens);
      } catch (const Error& e) {
        throw Error(fmt::format("{}: {}:{}: cannot tokenize the document: {}", what,
                                docs.files.at(doc.file_index), doc.line, e.what()));
      }
      out.trained.resize(out.tokens.size(), seg.trained ? 1 : 0);
    }
    const size_t n = out.tokens.size() - before;
    if (n == 0) {
      throw Error(fmt::format("{}: {}:{}: the document gives no tokens", what,
                              docs.files.at(doc.file_index), doc.line));
    }
    out.lengths.push_back(n);
  }
}

}  // namespace

TokenizedDocs tokenize_documents(const SourceDocuments& docs, const Tokenizer& tokenizer,
                                 int threads, const std::string& what) {
  const size_t n_docs = docs.documents.size();
  const size_t n_blocks = (n_docs + kDocsPerBlock - 1) / kDocsPerBlock;
  std::vector<Block> blocks(n_blocks);
  std::exception_ptr failure;
  std::mutex failure_mutex;
  const int n_threads = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (size_t b = 0; b < n_blocks; ++b) {
    try {
      const size_t first = b * kDocsPerBlock;
      tokenize_block(docs, first, std::min(n_docs, first + kDocsPerBlock), tokenizer, what,
                     blocks[b]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);

  TokenizedDocs out;
  size_t total = 0;
  for (const auto& b : blocks) total += b.tokens.size();
  out.tokens.reserve(total);
  out.offsets.reserve(n_docs + 1);
  out.mask.assign((total + 7) / 8, 0);
  for (auto& b : blocks) {
    for (uint64_t len : b.lengths) out.offsets.push_back(out.offsets.back() + len);
    const size_t base = out.tokens.size();
    for (size_t i = 0; i < b.trained.size(); ++i) {
      const size_t t = base + i;
      out.mask[t >> 3] |= static_cast<uint8_t>(b.trained[i] << (t & 7));
    }
    out.tokens.insert(out.tokens.end(), b.tokens.begin(), b.tokens.end());
    b = Block{};  // free as we go
  }
  out.skipped_records = docs.bad.count;
  out.notes = docs.bad.messages;
  return out;
}

uint64_t tokenizer_fingerprint(const Tokenizer& tokenizer) {
  Hasher64 h(0x70CE2F1A9E5ull);
  const int32_t n = tokenizer.vocab_size();
  h.update_u64(static_cast<uint64_t>(tokenizer.kind()));
  h.update_string(tokenizer.pre_name());
  if (tokenizer.spec().normalize_nfc) h.update_string("NFC");  // (older caches stay valid)
  h.update_u64(static_cast<uint64_t>(n));
  for (int32_t id :
       {tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id(), tokenizer.unk_id()}) {
    h.update_u64(static_cast<uint64_t>(static_cast<int64_t>(id)));
  }
  h.update_u64((tokenizer.add_bos() ? 1 : 0) | (tokenizer.add_eos() ? 2 : 0));
  for (int32_t id = 0; id < n; ++id) {
    h.update_string(tokenizer.token_text(id));
    h.update_u64(static_cast<uint64_t>(tokenizer.token_type(id)));
    h.update_u64(std::bit_cast<uint32_t>(tokenizer.token_score(id)));
  }
  // The merges' effect: each token's text re-encoded, then a probe text.
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < n; ++id) {
    if (tokenizer.token_type(id) != TokenType::Normal) continue;
    const std::string piece = tokenizer.token_piece(id);
    if (find_invalid_utf8(piece) != std::string::npos) continue;
    ids.clear();
    tokenizer.encode_append(piece, false, false, ids);
    h.update_u64(ids.size());
    h.update(ids.data(), ids.size() * sizeof(int32_t));
  }
  static const char* const kProbe =
      "The quick brown fox jumps over the lazy dog. 1234567890 +-*/= x_1 != y2;\n"
      "  def main(argc, argv):\n\treturn 0  # indented code\n"
      "Ünïcödé façade naïve coöperate — “quotes” ‘single’ … 日本語のテキスト 中文 한국어 "
      "Русский текст ελληνικά עברית العربية हिन्दी "
      "🙂🚀\n"
      "don't won't it's you're we'll they've I'd   multiple   spaces\r\n";
  ids.clear();
  tokenizer.encode_append(kProbe, false, true, ids);
  h.update_u64(ids.size());
  h.update(ids.data(), ids.size() * sizeof(int32_t));
  return h.digest();
}

}  // namespace loom
