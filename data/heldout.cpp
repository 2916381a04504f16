// Deterministic held-out split by document and the evaluation stream over held-out documents.
#include "data/heldout.h"

#include <fmt/format.h>

#include <algorithm>

#include "autograd/check.h"
#include "data/hash.h"

namespace loom {

DocumentSplit split_documents(int64_t n_documents, double heldout_fraction, uint64_t split_seed,
                              std::string_view what) {
  if (!(heldout_fraction >= 0.0 && heldout_fraction <= 1.0)) {
    throw Error(fmt::format("{}: heldout_fraction {} is outside [0, 1]", what, heldout_fraction));
  }
  DocumentSplit split;
  // 53 high bits of the hash as a fraction in [0, 1).
  const auto unit = [&](int64_t i) {
    const uint64_t h = mix64(hash_combine(split_seed, static_cast<uint64_t>(i)));
    return static_cast<double>(h >> 11) * 0x1.0p-53;
  };
  int64_t lowest = -1, highest = -1;
  double lowest_u = 2.0, highest_u = -1.0;
  for (int64_t i = 0; i < n_documents; ++i) {
    const double u = unit(i);
    (u < heldout_fraction ? split.heldout : split.train).push_back(i);
    if (u < lowest_u) lowest_u = u, lowest = i;
    if (u > highest_u) highest_u = u, highest = i;
  }
  const bool proper = heldout_fraction > 0.0 && heldout_fraction < 1.0 && n_documents >= 2;
  const auto move = [](std::vector<int64_t>& from, std::vector<int64_t>& to, int64_t i) {
    from.erase(std::find(from.begin(), from.end(), i));
    to.insert(std::lower_bound(to.begin(), to.end(), i), i);
  };
  if (proper && split.heldout.empty()) move(split.train, split.heldout, lowest);
  if (proper && split.train.empty()) move(split.heldout, split.train, highest);
  return split;
}

bool EvalStream::DocumentPieces::next(Piece& piece) {
  if (next_index >= documents.size()) return false;
  const int64_t doc = documents[next_index++];
  piece = Piece{0, doc, 0, framed_length(*source, doc, framing)};
  return true;
}

EvalStream::EvalStream(std::shared_ptr<const TokenizedSource> source,
                       std::vector<int64_t> documents, PackingConfig packing)
    : packer_({source}, packing) {
  for (int64_t d : documents) {
    LOOM_CHECK(d >= 0 && d < source->num_documents(), "eval stream of '{}': document {} of {}",
               source->name(), d, source->num_documents());
  }
  pieces_.source = std::move(source);
  pieces_.documents = std::move(documents);
  pieces_.framing = packing.framing;
}

bool EvalStream::next(Batch& batch) {
  return packer_.next_batch(pieces_, batch);
}

void EvalStream::rewind() {
  pieces_.next_index = 0;
  packer_.set_cursor({});
}

}  // namespace loom
