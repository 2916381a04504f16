// WindowPacker: pieces -> rows of T + 1 stream tokens -> inputs, targets, positions, document ids.
#include "data/packing.h"

#include <fmt/format.h>

#include "autograd/check.h"
#include "layers/tokenizer.h"

namespace loom {

namespace {
constexpr int32_t kIgnore = -100;
}

DocumentFraming document_framing(const Tokenizer& tokenizer) {
  if (tokenizer.eos_id() < 0) {
    throw Error(
        fmt::format("packing: the tokenizer of '{}' has no EOS token to put between "
                    "documents",
                    tokenizer.source()));
  }
  DocumentFraming f;
  f.eos_id = tokenizer.eos_id();
  f.bos_id = tokenizer.add_bos() ? tokenizer.bos_id() : -1;
  return f;
}

int64_t Batch::counted_targets() const {
  int64_t n = 0;
  for (int32_t t : targets) n += t != kIgnore;
  return n;
}

int64_t Batch::real_tokens() const {
  int64_t n = 0;
  for (int32_t s : source_ids) n += s >= 0;
  return n;
}

WindowPacker::WindowPacker(std::vector<std::shared_ptr<const TokenizedSource>> sources,
                           PackingConfig config)
    : sources_(std::move(sources)), config_(config) {
  LOOM_CHECK(config_.seq_len >= 1, "packing: seq_len must be at least 1, got {}", config_.seq_len);
  LOOM_CHECK(config_.batch_size >= 1, "packing: batch_size must be at least 1, got {}",
             config_.batch_size);
  LOOM_CHECK(config_.framing.eos_id >= 0, "packing: an EOS id is required (got {})",
             config_.framing.eos_id);
  for (size_t i = 0; i < sources_.size(); ++i) {
    LOOM_CHECK(sources_[i] != nullptr, "packing: source {} is null", i);
  }
  const size_t n = static_cast<size_t>(config_.seq_len) + 1;
  ids_.reserve(n);
  labels_.reserve(n);
  srcs_.reserve(n);
  trained_.reserve(n);
}

void WindowPacker::set_cursor(const Cursor& cursor) {
  if (cursor.has_piece) {
    const Piece& p = cursor.piece;
    LOOM_CHECK(p.source >= 0 && static_cast<size_t>(p.source) < sources_.size(),
               "packing cursor: source {} of {}", p.source, sources_.size());
    LOOM_CHECK(p.doc >= 0 && p.doc < sources_[p.source]->num_documents() && p.begin >= 0 &&
                   p.begin < p.end &&
                   p.end <= framed_length(*sources_[p.source], p.doc, config_.framing) &&
                   cursor.offset >= 0 && cursor.offset <= p.end - p.begin,
               "packing cursor: piece (source {}, doc {}, [{}, {})) offset {} is out of range",
               p.source, p.doc, p.begin, p.end, cursor.offset);
  }
  cursor_ = cursor;
}

// Appends `count` tokens of the current piece from the cursor on, all with document `label`.
void WindowPacker::take(int64_t count, int32_t label) {
  const Piece& p = cursor_.piece;
  const TokenizedSource& src = *sources_[p.source];
  const DocumentFraming& f = config_.framing;
  const int64_t bos = f.bos_id >= 0 ? 1 : 0;
  const int64_t len = src.document_length(p.doc);
  const int64_t base = src.document_begin(p.doc);
  const bool all = config_.train_on_prompt;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t i = p.begin + cursor_.offset + k;  // framed index
    int32_t id;
    bool trained;
    if (i < bos) {
      id = f.bos_id;
      trained = false;
    } else if (i == bos + len) {
      id = f.eos_id;
      // After a document that ends with the EOS itself, a second one teaches nothing.
      trained = src.token(base + len - 1) != f.eos_id && (all || src.trained(base + len - 1));
    } else {
      id = src.token(base + i - bos);
      trained = all || src.trained(base + i - bos);
    }
    ids_.push_back(id);
    trained_.push_back(trained ? 1 : 0);
    labels_.push_back(label);
    srcs_.push_back(p.source);
  }
  cursor_.offset += count;
}

bool WindowPacker::fill_row(PieceStream& stream, Batch& batch, int64_t row) {
  const int64_t T = config_.seq_len;
  const auto want = static_cast<size_t>(T + 1);
  ids_.clear();
  labels_.clear();
  srcs_.clear();
  trained_.clear();
  int32_t label = 0;
  while (ids_.size() < want) {
    if (!cursor_.has_piece || cursor_.offset == cursor_.piece.end - cursor_.piece.begin) {
      Piece next;
      if (!stream.next(next)) break;
      LOOM_CHECK(next.source >= 0 && static_cast<size_t>(next.source) < sources_.size() &&
                     next.doc >= 0 && next.doc < sources_[next.source]->num_documents() &&
                     next.begin >= 0 && next.begin < next.end &&
                     next.end <= framed_length(*sources_[next.source], next.doc, config_.framing),
                 "packing: bad piece (source {}, doc {}, [{}, {}))", next.source, next.doc,
                 next.begin, next.end);
      const bool continues = cursor_.has_piece && next.source == cursor_.piece.source &&
                             next.doc == cursor_.piece.doc && next.begin == cursor_.piece.end;
      cursor_ = Cursor{true, next, 0};
      if (!continues && !ids_.empty()) {
        if (config_.one_document_per_row) {
          if (ids_.size() >= 2) break;  // the new document starts the next row
          // Only the previous document's last token (its EOS, shared with the row before) is
          // here: it has nothing left to predict, so the row starts over with the new document.
          ids_.clear();
          labels_.clear();
          srcs_.clear();
          trained_.clear();
        } else {
          ++label;
        }
      }
    }
    const int64_t left = cursor_.piece.end - cursor_.piece.begin - cursor_.offset;
    take(std::min<int64_t>(left, static_cast<int64_t>(want - ids_.size())), label);
  }
  const auto n = static_cast<int64_t>(ids_.size());
  if (n == T + 1) cursor_.offset -= 1;  // the last token starts the next row
  if (n < 2) return false;

  const int64_t real = std::min(n, T);  // input tokens that are not padding
  int32_t* tok = batch.tokens.data() + row * T;
  int32_t* tgt = batch.targets.data() + row * T;
  int32_t* pos = batch.positions.data() + row * T;
  int32_t* doc = batch.document_ids.data() + row * T;
  int32_t* src = batch.source_ids.data() + row * T;
  int32_t position = 0;
  for (int64_t i = 0; i < real; ++i) {
    position = (i > 0 && labels_[i] == labels_[i - 1]) ? position + 1 : 0;
    tok[i] = ids_[i];
    pos[i] = position;
    doc[i] = labels_[i];
    src[i] = srcs_[i];
    const bool has_next = i + 1 < n;
    tgt[i] = has_next && labels_[i + 1] == labels_[i] && trained_[i + 1] ? ids_[i + 1] : kIgnore;
  }
  const int32_t pad = config_.pad_id >= 0 ? config_.pad_id : config_.framing.eos_id;
  const int32_t pad_doc = labels_[real - 1] + 1;
  for (int64_t i = real; i < T; ++i) {
    tok[i] = pad;
    tgt[i] = kIgnore;
    pos[i] = static_cast<int32_t>(i - real);
    doc[i] = pad_doc;
    src[i] = -1;
  }
  return true;
}

bool WindowPacker::next_batch(PieceStream& stream, Batch& batch) {
  const int64_t B = config_.batch_size, T = config_.seq_len;
  batch.seq_len = T;
  for (auto* v :
       {&batch.tokens, &batch.targets, &batch.positions, &batch.document_ids, &batch.source_ids}) {
    v->resize(static_cast<size_t>(B * T));
  }
  int64_t rows = 0;
  while (rows < B && fill_row(stream, batch, rows)) ++rows;
  batch.batch = rows;
  for (auto* v :
       {&batch.tokens, &batch.targets, &batch.positions, &batch.document_ids, &batch.source_ids}) {
    v->resize(static_cast<size_t>(rows * T));
  }
  return rows > 0;
}

}  // namespace loom
