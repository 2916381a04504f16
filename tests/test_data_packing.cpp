// Data module, packing: exact windows on a hand-made stream (overlap between rows, EOS between
// documents and its target, prompt tokens ignored, positions and document ids, BOS framing,
// pieces that continue a document, padding at the end), then a randomized check of every input
// and target against the concatenated stream.
#include <gtest/gtest.h>

#include <random>

#include "autograd/check.h"
#include "data/heldout.h"
#include "data/packing.h"
#include "data_test_helpers.h"

namespace loom {
namespace {

using Ids = std::vector<int32_t>;
constexpr int32_t X = -100;
constexpr int32_t kEos = 99, kBos = 98;

struct VectorPieces : PieceStream {
  std::vector<Piece> pieces;
  size_t next_index = 0;
  bool next(Piece& p) override {
    if (next_index >= pieces.size()) return false;
    p = pieces[next_index++];
    return true;
  }
};

// doc0 = 10 11 12 (trained), doc1 = 20 21 | 22 23 24 (prompt | completion), doc2 = 30.
std::shared_ptr<const TokenizedSource> small_source() {
  TokenizedDocs d;
  d.tokens = {10, 11, 12, 20, 21, 22, 23, 24, 30};
  d.offsets = {0, 3, 8, 9};
  const std::vector<bool> bits = {1, 1, 1, 0, 0, 1, 1, 1, 1};
  d.mask.assign(2, 0);
  for (size_t i = 0; i < bits.size(); ++i)
    d.mask[i / 8] |= static_cast<uint8_t>(bits[i] << (i % 8));
  return TokenizedSource::from_docs("small", std::move(d));
}

PackingConfig packing(int64_t T, int64_t B, int32_t bos = -1) {
  PackingConfig p;
  p.seq_len = T;
  p.batch_size = B;
  p.framing = {bos, kEos};
  return p;
}

VectorPieces whole_docs(const TokenizedSource& src, const DocumentFraming& f,
                        std::vector<int64_t> docs = {0, 1, 2}) {
  VectorPieces v;
  for (int64_t d : docs) v.pieces.push_back({0, d, 0, framed_length(src, d, f)});
  return v;
}

TEST(DataPacking, WindowsTargetsPositionsAndDocumentIds) {
  auto src = small_source();
  WindowPacker packer({src}, packing(4, 1));
  auto stream = whole_docs(*src, {-1, kEos});
  Batch b;
  // Stream: 10 11 12 99 20 21 22 23 24 99 30 99; rows share one token.
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.batch, 1);
  EXPECT_EQ(b.tokens, (Ids{10, 11, 12, 99}));
  EXPECT_EQ(b.targets, (Ids{11, 12, 99, X}));  // EOS is a target; what follows EOS is not
  EXPECT_EQ(b.positions, (Ids{0, 1, 2, 3}));
  EXPECT_EQ(b.document_ids, (Ids{0, 0, 0, 0}));
  EXPECT_EQ(b.source_ids, (Ids{0, 0, 0, 0}));
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.tokens, (Ids{20, 21, 22, 23}));
  EXPECT_EQ(b.targets, (Ids{X, 22, 23, 24}));  // 21 is prompt: not a target
  EXPECT_EQ(b.positions, (Ids{0, 1, 2, 3}));
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.tokens, (Ids{24, 99, 30, 99}));
  EXPECT_EQ(b.targets, (Ids{99, X, 99, X}));
  EXPECT_EQ(b.positions, (Ids{0, 1, 0, 1}));  // 24 continues doc1 from the last row: restarts at 0
  EXPECT_EQ(b.document_ids, (Ids{0, 0, 1, 1}));
  EXPECT_EQ(b.counted_targets(), 2);
  EXPECT_FALSE(packer.next_batch(stream, b));
  EXPECT_EQ(b.batch, 0);
}

TEST(DataPacking, TrainOnPromptBatchesAndPadding) {
  auto src = small_source();
  auto cfg = packing(8, 2);
  cfg.train_on_prompt = true;
  cfg.pad_id = 7;
  WindowPacker packer({src}, cfg);
  auto stream = whole_docs(*src, cfg.framing);
  Batch b;
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.batch, 2);
  EXPECT_EQ(b.tokens, (Ids{10, 11, 12, 99, 20, 21, 22, 23, /**/ 24, 99, 30, 99, 7, 7, 7, 7}));
  EXPECT_EQ(b.targets, (Ids{11, 12, 99, X, 21, 22, 23, 24, /**/ 99, X, 99, X, X, X, X, X}));
  EXPECT_EQ(b.positions, (Ids{0, 1, 2, 3, 0, 1, 2, 3, /**/ 0, 1, 0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(b.document_ids, (Ids{0, 0, 0, 0, 1, 1, 1, 1, /**/ 0, 0, 1, 1, 2, 2, 2, 2}));
  EXPECT_EQ(b.source_ids, (Ids{0, 0, 0, 0, 0, 0, 0, 0, /**/ 0, 0, 0, 0, -1, -1, -1, -1}));
  EXPECT_FALSE(packer.next_batch(stream, b));
}

// A chat-like document whose last token is prompt: its EOS is not a target.
TEST(DataPacking, EosTargetFollowsTheLastTokensBit) {
  TokenizedDocs d;
  d.tokens = {1, 2, 3};
  d.offsets = {0, 3};
  d.mask = {0b011};  // 3 (the last) is prompt
  auto src = TokenizedSource::from_docs("chat", std::move(d));
  WindowPacker packer({src}, packing(3, 1));
  auto stream = whole_docs(*src, {-1, kEos}, {0, 0});
  Batch b;
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.tokens, (Ids{1, 2, 3}));
  EXPECT_EQ(b.targets, (Ids{2, X, X}));  // 3 is prompt, and so the EOS after it is not trained
}

// A document that ends with the EOS itself (a Mistral conversation: its last reply's </s> is
// trained): the framing EOS after it is not a target, with or without train_on_prompt.
TEST(DataPacking, NoSecondEosTargetAfterADocumentEndingInEos) {
  TokenizedDocs d;
  d.tokens = {1, 2, kEos};
  d.offsets = {0, 3};
  d.mask = {0b110};  // 1 is prompt; 2 and its EOS are trained
  auto src = TokenizedSource::from_docs("chat", std::move(d));
  for (bool on_prompt : {false, true}) {
    auto cfg = packing(4, 1);
    cfg.train_on_prompt = on_prompt;
    WindowPacker packer({src}, cfg);
    auto stream = whole_docs(*src, {-1, kEos}, {0, 0});
    Batch b;
    ASSERT_TRUE(packer.next_batch(stream, b));
    EXPECT_EQ(b.tokens, (Ids{1, 2, kEos, kEos}));
    EXPECT_EQ(b.targets, (Ids{2, kEos, X, X})) << on_prompt;
  }
}

TEST(DataPacking, BosFramingAndPiecesThatContinueADocument) {
  auto src = small_source();
  // doc1 framed: 98 20 21 22 23 24 99; cut in pieces [0,3) [3,7), then doc0 [0,2) and doc1 again.
  VectorPieces stream;
  stream.pieces = {{0, 1, 0, 3}, {0, 1, 3, 7}, {0, 0, 0, 2}, {0, 1, 0, 2}};
  auto cfg = packing(12, 1, kBos);
  cfg.train_on_prompt = true;
  WindowPacker packer({src}, cfg);
  Batch b;
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.tokens, (Ids{98, 20, 21, 22, 23, 24, 99, 98, 10, 98, 20, 99}));
  EXPECT_EQ(b.batch, 1);
  // The continued piece stays in document 0; doc0's slice and doc1's new slice are new documents.
  EXPECT_EQ(b.document_ids, (Ids{0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3}));
  EXPECT_EQ(b.positions, (Ids{0, 1, 2, 3, 4, 5, 6, 0, 1, 0, 1, 0}));
  // BOS is never a target; 10 -> (doc0 cut) is a boundary; the padding has its own document.
  EXPECT_EQ(b.targets, (Ids{20, 21, 22, 23, 24, 99, X, 10, X, 20, X, X}));
  EXPECT_EQ(b.tokens.back(), kEos);  // pad_id -1: the EOS pads
  EXPECT_EQ(b.source_ids.back(), -1);
}

// Random documents, masks, T and B: every input and target checked against the stream.
TEST(DataPacking, RandomizedAgainstTheStream) {
  std::mt19937_64 rng(11);
  size_t checked = 0;
  for (int trial = 0; trial < 200; ++trial) {
    TokenizedDocs d;
    const int n_docs = 1 + static_cast<int>(rng() % 12);
    std::vector<bool> bits;
    for (int i = 0; i < n_docs; ++i) {
      const int len = 1 + static_cast<int>(rng() % 20);
      // One document in four ends with the EOS itself (as Mistral's chat turns end in </s>).
      const bool ends_in_eos = rng() % 4 == 0;
      for (int k = 0; k < len; ++k) {
        d.tokens.push_back(ends_in_eos && k == len - 1 ? kEos : static_cast<int32_t>(1000 * i + k));
        bits.push_back(rng() % 3 != 0);
      }
      d.offsets.push_back(d.tokens.size());
    }
    d.mask.assign((bits.size() + 7) / 8, 0);
    for (size_t i = 0; i < bits.size(); ++i)
      d.mask[i / 8] |= static_cast<uint8_t>(bits[i] << (i % 8));
    auto src = TokenizedSource::from_docs("r", std::move(d));
    const bool with_bos = rng() % 2 == 0;
    const bool on_prompt = rng() % 4 == 0;
    const DocumentFraming f{with_bos ? kBos : -1, kEos};
    // The expected stream with per-token document and target bit.
    std::vector<int32_t> tok, doc;
    std::vector<bool> bit;
    for (int i = 0; i < n_docs; ++i) {
      if (with_bos) tok.push_back(kBos), doc.push_back(i), bit.push_back(false);
      const auto t = src->document_tokens(i);
      for (size_t k = 0; k < t.size(); ++k) {
        tok.push_back(t[k]);
        doc.push_back(i);
        bit.push_back(on_prompt || src->trained(src->document_begin(i) + static_cast<int64_t>(k)));
      }
      tok.push_back(kEos);
      doc.push_back(i);
      bit.push_back(t.back() != kEos && (on_prompt || src->trained(src->document_begin(i) +
                                                                   src->document_length(i) - 1)));
    }
    auto cfg = packing(1 + static_cast<int64_t>(rng() % 16), 1 + static_cast<int64_t>(rng() % 3),
                       f.bos_id);
    cfg.train_on_prompt = on_prompt;
    const int64_t T = cfg.seq_len;
    WindowPacker packer({src}, cfg);
    std::vector<int64_t> all(static_cast<size_t>(n_docs));
    for (int i = 0; i < n_docs; ++i) all[i] = i;
    auto stream = whole_docs(*src, f, all);
    Batch b;
    size_t j = 0;  // stream index of the next input
    while (packer.next_batch(stream, b)) {
      for (int64_t r = 0; r < b.batch; ++r) {
        const size_t row_start = j;
        for (int64_t i = 0; i < T; ++i) {
          const size_t at = static_cast<size_t>(r * T + i);
          if (b.source_ids[at] < 0) {  // padding: only at the very end
            ASSERT_GE(j + 1, tok.size());
            ASSERT_EQ(b.targets[at], X);
            continue;
          }
          ASSERT_LT(j, tok.size());
          ASSERT_EQ(b.tokens[at], tok[j]) << "trial " << trial << " j " << j;
          const bool counted = j + 1 < tok.size() && doc[j + 1] == doc[j] && bit[j + 1];
          ASSERT_EQ(b.targets[at], counted ? tok[j + 1] : X) << "trial " << trial << " j " << j;
          size_t first = j;
          while (first > row_start && doc[first - 1] == doc[j]) --first;
          ASSERT_EQ(b.positions[at], static_cast<int32_t>(j - first));
          ++j;
        }
      }
    }
    // Every token was an input, except a last one left alone in a row (no target to give).
    EXPECT_GE(j + 1, tok.size()) << "trial " << trial;
    checked += j;
  }
  EXPECT_GT(checked, 10000u);
}

TEST(DataPacking, EvalStreamPacksHeldoutDocumentsWhole) {
  auto src = small_source();
  EvalStream eval(src, {2, 0}, packing(16, 4));
  Batch b;
  ASSERT_TRUE(eval.next(b));
  EXPECT_EQ(b.batch, 1);
  EXPECT_EQ(Ids(b.tokens.begin(), b.tokens.begin() + 6), (Ids{30, 99, 10, 11, 12, 99}));
  EXPECT_EQ(b.counted_targets(), 4);  // 30->99, 10->11, 11->12, 12->99
  EXPECT_FALSE(eval.next(b));
  eval.rewind();
  ASSERT_TRUE(eval.next(b));
  EXPECT_EQ(b.tokens[0], 30);
}

// packing: false -- one document per row: padded after a short document, a long one goes on in
// the next row; a row never starts on the lone shared EOS of a finished document.
TEST(DataPacking, OneDocumentPerRow) {
  auto src = small_source();
  auto cfg = packing(5, 1);
  cfg.one_document_per_row = true;
  cfg.train_on_prompt = true;
  WindowPacker packer({src}, cfg);
  auto stream = whole_docs(*src, cfg.framing);
  Batch b;
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.tokens, (Ids{10, 11, 12, 99, 99}));  // doc0 + padding (the EOS pads)
  EXPECT_EQ(b.targets, (Ids{11, 12, 99, X, X}));
  EXPECT_EQ(b.document_ids, (Ids{0, 0, 0, 0, 1}));
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.tokens, (Ids{20, 21, 22, 23, 24}));  // doc1 fills the row; its EOS is the target
  EXPECT_EQ(b.targets, (Ids{21, 22, 23, 24, 99}));
  ASSERT_TRUE(packer.next_batch(stream, b));
  EXPECT_EQ(b.tokens, (Ids{30, 99, 99, 99, 99}));  // not a row starting with doc1's EOS
  EXPECT_EQ(b.targets, (Ids{99, X, X, X, X}));
  EXPECT_EQ(b.source_ids, (Ids{0, 0, -1, -1, -1}));
  EXPECT_FALSE(packer.next_batch(stream, b));
}

TEST(DataPacking, FramingFromTheTokenizer) {
  auto tok = test::ByteTokenizer::make();
  EXPECT_EQ(document_framing(*tok).eos_id, test::ByteTokenizer::kEos);
  EXPECT_EQ(document_framing(*tok).bos_id, -1);
  auto with_bos = test::ByteTokenizer::make(true);
  EXPECT_EQ(document_framing(*with_bos).bos_id, test::ByteTokenizer::kImStart);
}

}  // namespace
}  // namespace loom
