// The training data stream: the mixer's pieces packed into batches (packing.h), with a position
// that resumes it exactly and the per-source counts of what it delivered.
//
// "Delivered" counts a token when it has been an input of a returned batch (the token a row
// shares with the next counts once), and a document when its first token has.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/mixer.h"
#include "data/packing.h"

namespace loom {

struct TrainStreamPosition {
  MixerPosition before_piece;  // the mixer before it drew the piece being packed
  bool has_piece = false;
  int64_t piece_offset = 0;  // tokens of that piece already consumed
  bool operator==(const TrainStreamPosition&) const = default;

  std::vector<int64_t> to_ints() const;  // has_piece, piece_offset, then the mixer position
  static TrainStreamPosition from_ints(std::span<const int64_t> ints);
};

struct SourceDelivery {
  std::string name;
  double target_weight = 0;  // normalised weight
  int64_t tokens = 0;
  int64_t examples = 0;
  double token_fraction = 0;    // of all delivered tokens
  double example_fraction = 0;  // of all delivered documents
  int64_t epoch = 0;            // complete passes over its training documents drawn
  bool exhausted = false;       // on_exhausted stop: every training document drawn
};

class TrainStream {
 public:
  // The sources' packing order is the mixer's; packing.framing must equal mixer.framing.
  TrainStream(std::vector<MixSource> sources, MixerConfig mixer, PackingConfig packing);
  TrainStream(const TrainStream&) = delete;  // holds a pointer to its own mixer
  TrainStream& operator=(const TrainStream&) = delete;

  // False when the stream has ended (OnExhausted::Stop); the last batch may have fewer rows.
  bool next(Batch& batch);
  TrainStreamPosition position() const;
  void restore(const TrainStreamPosition& position);
  std::vector<SourceDelivery> delivered() const;
  const Mixer& mixer() const { return mixer_; }

 private:
  // Hands the mixer's pieces to the packer, remembering the mixer's position before each.
  struct Pieces : PieceStream {
    Mixer* mixer = nullptr;
    MixerPosition before_current;
    bool next(Piece& piece) override;
  };
  Mixer mixer_;
  WindowPacker packer_;
  Pieces pieces_;
};

}  // namespace loom
