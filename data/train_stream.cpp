// TrainStream: mixer + packer, the resumable position, delivered counts per source.
#include "data/train_stream.h"

#include <fmt/format.h>

#include "autograd/check.h"

namespace loom {
namespace {

std::vector<std::shared_ptr<const TokenizedSource>> data_of(const std::vector<MixSource>& s) {
  std::vector<std::shared_ptr<const TokenizedSource>> out;
  for (const auto& m : s) out.push_back(m.data);
  return out;
}

}  // namespace

std::vector<int64_t> TrainStreamPosition::to_ints() const {
  std::vector<int64_t> out = {has_piece ? 1 : 0, piece_offset};
  const auto mixer = before_piece.to_ints();
  out.insert(out.end(), mixer.begin(), mixer.end());
  return out;
}

TrainStreamPosition TrainStreamPosition::from_ints(std::span<const int64_t> ints) {
  if (ints.size() < 2 || (ints[0] != 0 && ints[0] != 1) || ints[1] < 0) {
    throw Error(
        fmt::format("data stream position: {} integers that are not a saved position; the "
                    "checkpoint is from another loom version or damaged",
                    ints.size()));
  }
  TrainStreamPosition p;
  p.has_piece = ints[0] == 1;
  p.piece_offset = ints[1];
  p.before_piece = MixerPosition::from_ints(ints.subspan(2));
  return p;
}

bool TrainStream::Pieces::next(Piece& piece) {
  MixerPosition before = mixer->position();
  if (!mixer->next(piece)) return false;
  before_current = std::move(before);
  return true;
}

TrainStream::TrainStream(std::vector<MixSource> sources, MixerConfig mixer, PackingConfig packing)
    : mixer_(sources, mixer), packer_(data_of(sources), packing) {
  LOOM_CHECK(packing.framing.bos_id == mixer.framing.bos_id &&
                 packing.framing.eos_id == mixer.framing.eos_id,
             "train stream: packing framing (bos {}, eos {}) differs from the mixer's ({}, {})",
             packing.framing.bos_id, packing.framing.eos_id, mixer.framing.bos_id,
             mixer.framing.eos_id);
  pieces_.mixer = &mixer_;
  pieces_.before_current = mixer_.position();
}

bool TrainStream::next(Batch& batch) {
  return packer_.next_batch(pieces_, batch);
}

TrainStreamPosition TrainStream::position() const {
  TrainStreamPosition p;
  const auto& cursor = packer_.cursor();
  p.has_piece = cursor.has_piece;
  p.piece_offset = cursor.offset;
  p.before_piece = cursor.has_piece ? pieces_.before_current : mixer_.position();
  return p;
}

void TrainStream::restore(const TrainStreamPosition& position) {
  mixer_.seek(position.before_piece);
  WindowPacker::Cursor cursor;
  if (position.has_piece) {
    Piece piece;
    if (!mixer_.next(piece)) {
      throw Error("train stream: the saved position points past the end of the stream");
    }
    cursor = {true, piece, position.piece_offset};
  }
  packer_.set_cursor(cursor);
  pieces_.before_current = position.before_piece;
}

std::vector<SourceDelivery> TrainStream::delivered() const {
  std::vector<SourceDelivery> out;
  const auto& cursor = packer_.cursor();
  int64_t all_tokens = 0, all_examples = 0;
  for (int s = 0; s < mixer_.num_sources(); ++s) {
    const SourceCursor& c = mixer_.position().sources[s];
    SourceDelivery d;
    d.name = mixer_.source(s).data->name();
    d.target_weight = mixer_.normalized_weight(s);
    d.tokens = c.drawn_tokens;
    d.examples = c.drawn_examples;
    // Under Stop a source that ran out stays at its last document (Repeat rolls over at once).
    d.exhausted = c.next_doc >= static_cast<int64_t>(mixer_.split(s).train.size());
    d.epoch = c.epoch + (d.exhausted ? 1 : 0);
    if (cursor.has_piece && cursor.piece.source == s) {
      d.tokens -= cursor.piece.end - cursor.piece.begin - cursor.offset;
      if (cursor.piece.begin == 0 && cursor.offset == 0) --d.examples;
    }
    all_tokens += d.tokens;
    all_examples += d.examples;
    out.push_back(std::move(d));
  }
  for (auto& d : out) {
    d.token_fraction = all_tokens > 0 ? static_cast<double>(d.tokens) / all_tokens : 0.0;
    d.example_fraction = all_examples > 0 ? static_cast<double>(d.examples) / all_examples : 0.0;
  }
  return out;
}

}  // namespace loom
