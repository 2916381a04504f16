// Packing documents into fixed training windows.
//
// The stream is the documents one after another, each framed as [BOS] tokens EOS (BOS only when
// the tokenizer adds one, DocumentFraming). Row k of the stream holds tokens [k*T, k*T + T] --
// T + 1 tokens, so consecutive rows share one token: inputs are the first T, targets the last T
// (shifted by one). Per input token i of a row:
//   tokens[i]       the token
//   targets[i]      the next token when it belongs to the same document and its loss-mask bit is
//                   on; else -100 (ignored). Loss-mask bits: the cache's bit (off for prompt tokens
//                   of instruct / chat data), all on with train_on_prompt; BOS is never a target.
//                   The EOS closing a document IS a target (predicted by the document's last
//                   token) when that last token's bit is on: plain text and completions learn to
//                   end, a ChatML transcript (ending in a prompt-side newline) does not; nor does
//                   a document that ends with the EOS itself (Mistral's </s> closing the last
//                   reply, or Llama 3's <|eot_id|> where that is the EOS). The EOS's own target --
//                   the next document's first token -- is always -100.
//   positions[i]    0 at the first token of each document in the row, counting up; a document
//                   continued from the previous row starts again at 0 (it cannot see that row).
//   document_ids[i] 0 for the row's first document, +1 at each new document (the attention's
//                   document mask: a token sees only earlier tokens with the same id).
//   source_ids[i]   the index of the source the token came from; -1 for padding.
// Without packing (one_document_per_row), a row holds tokens of one document only: a shorter
// document's row is padded after its EOS, a longer one goes on in the next rows (sharing a
// token between rows as above).
// When the stream ends, the last row is padded (pad token, target -100, its own document id);
// a row needs at least 2 real tokens, and a batch may then hold fewer than batch_size rows.
//
// Documents arrive as pieces (a whole framed document or a slice of one, from the mixer); a piece
// that continues the previous one (same source and document, begins where it ended) stays in the
// same document, anything else starts a new one.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "data/tokenized_source.h"

namespace loom {

class Tokenizer;

struct DocumentFraming {
  int32_t bos_id = -1;  // -1: no BOS in front of documents
  int32_t eos_id = -1;  // required
};
// BOS when the tokenizer adds one (add_bos), its EOS; throws when it has no EOS.
DocumentFraming document_framing(const Tokenizer& tokenizer);

// Framed length of a document: [BOS] + tokens + EOS.
inline int64_t framed_length(const TokenizedSource& src, int64_t doc,
                             const DocumentFraming& framing) {
  return src.document_length(doc) + 1 + (framing.bos_id >= 0 ? 1 : 0);
}

// A slice [begin, end) of one framed document of one source.
struct Piece {
  int32_t source = -1;
  int64_t doc = -1;
  int64_t begin = 0, end = 0;
  bool operator==(const Piece&) const = default;
};

// Where packing gets its pieces from (the mixer, a held-out list).
class PieceStream {
 public:
  virtual ~PieceStream() = default;
  virtual bool next(Piece& piece) = 0;  // false: the stream has ended
};

struct PackingConfig {
  int64_t seq_len = 0;     // T
  int64_t batch_size = 1;  // B
  bool train_on_prompt = false;
  bool one_document_per_row = false;  // recipe `packing: false`
  DocumentFraming framing;
  int32_t pad_id = -1;  // -1: the EOS
};

struct Batch {
  int64_t batch = 0;    // rows filled (<= batch_size only at the end of a stream)
  int64_t seq_len = 0;  // T
  std::vector<int32_t> tokens, targets, positions, document_ids, source_ids;  // batch * seq_len
  int64_t counted_targets() const;  // targets that are not -100
  int64_t real_tokens() const;      // input tokens that are not padding
};

class WindowPacker {
 public:
  // sources[i] is the source a Piece with source == i reads.
  WindowPacker(std::vector<std::shared_ptr<const TokenizedSource>> sources, PackingConfig config);

  // Fills up to batch_size rows; false when the stream had too little left for one row.
  bool next_batch(PieceStream& stream, Batch& batch);

  // The piece being read and how many of its tokens were consumed: the packer's whole state
  // between rows (the next row starts at that token).
  struct Cursor {
    bool has_piece = false;
    Piece piece;
    int64_t offset = 0;
  };
  const Cursor& cursor() const { return cursor_; }
  void set_cursor(const Cursor& cursor);
  const PackingConfig& config() const { return config_; }
  const std::vector<std::shared_ptr<const TokenizedSource>>& sources() const { return sources_; }

 private:
  bool fill_row(PieceStream& stream, Batch& batch, int64_t row);
  void take(int64_t count, int32_t label);

  std::vector<std::shared_ptr<const TokenizedSource>> sources_;
  PackingConfig config_;
  Cursor cursor_;
  // The row being gathered: T + 1 tokens with their mask bit, document label and source.
  std::vector<int32_t> ids_, labels_, srcs_;
  std::vector<uint8_t> trained_;
};

}  // namespace loom
