// Held-out split of a source by document: deterministic from the split seed and the document
// index alone (not the training seed, so runs that differ in seed or mix evaluate on the same
// documents), and an evaluation stream over the held-out documents.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "data/packing.h"

namespace loom {

struct DocumentSplit {
  std::vector<int64_t> train;    // ascending document indices
  std::vector<int64_t> heldout;  // ascending
};

// Document i is held out when hash(split_seed, i), as a fraction of 2^64, is below
// heldout_fraction. With 0 < fraction < 1 and at least 2 documents, both sides get at least one
// document (the lowest-hash document is held out / the highest-hash one trained on if a side
// came out empty). Throws naming `what` when the fraction is outside [0, 1].
DocumentSplit split_documents(int64_t n_documents, double heldout_fraction, uint64_t split_seed,
                              std::string_view what);

// The held-out documents of one source, whole, in index order, packed like training windows
// (packing.h; the source index in source_ids is 0). Ends after the last document; the last row
// is padded.
class EvalStream {
 public:
  EvalStream(std::shared_ptr<const TokenizedSource> source, std::vector<int64_t> documents,
             PackingConfig packing);
  bool next(Batch& batch);
  int64_t num_documents() const { return static_cast<int64_t>(pieces_.documents.size()); }
  void rewind();

 private:
  struct DocumentPieces : PieceStream {
    std::shared_ptr<const TokenizedSource> source;
    std::vector<int64_t> documents;
    DocumentFraming framing;
    size_t next_index = 0;
    bool next(Piece& piece) override;
  };
  DocumentPieces pieces_;
  WindowPacker packer_;
};

}  // namespace loom
