// The mixer: several tokenized sources delivered as one stream at set ratios.
//
// Schedule. Weights are normalised. By tokens, every step draws the next piece of the source
// whose count would be lowest after it, relative to its weight -- argmin over sources of
// (drawn_tokens + next piece length) / weight, ties to the lower index (weighted fair queueing,
// a smooth weighted round-robin). A source's count never strays from its share of the total by
// more than about one piece, so the delivered ratio holds in every window, not just on average.
// Long documents are drawn in pieces of at most max_piece_tokens (packing keeps the pieces of a
// document that follow each other together); smaller pieces give a tighter ratio but cut long
// documents' context more often. By examples, the count is documents and documents are whole.
//
// Order. Each source's training documents (all but the held-out ones, heldout.h) are shuffled
// per epoch with a seed derived from (seed, source name, epoch). A source that runs out starts
// its next epoch, reshuffled (OnExhausted::Repeat), or ends the whole stream when the schedule
// next picks it (OnExhausted::Stop), so that what was delivered kept the ratio. With
// max_epochs N (under Repeat), a source that has run out N times ends the stream the same way:
// N passes over the data for one source, N passes over the one that runs out first in a mix.
// A weight of 0 leaves a source out of training (it is still evaluated).
//
// Resume. MixerPosition is a few integers per source; seek() to a saved position continues the
// exact same stream. The position carries a hash of the configuration and the sources' sizes,
// and seek() refuses a position made with another.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/heldout.h"
#include "data/packing.h"
#include "data/tokenized_source.h"

namespace loom {

enum class MixBy : uint8_t { Tokens, Examples };
enum class OnExhausted : uint8_t { Repeat, Stop };

struct MixSource {
  std::shared_ptr<const TokenizedSource> data;
  double weight = 1.0;
  double heldout_fraction = 0.0;
};

struct MixerConfig {
  MixBy mix_by = MixBy::Tokens;
  OnExhausted on_exhausted = OnExhausted::Repeat;
  // Repeat only: the stream ends when a source it picks has run out this many times; 0 = never.
  // Not part of the position's hash: a saved position resumes under another max_epochs (a run
  // given more epochs goes on where it ended).
  int64_t max_epochs = 0;
  uint64_t seed = 0;        // the shuffles
  uint64_t split_seed = 0;  // the held-out split (heldout.h)
  int64_t max_piece_tokens = 512;
  DocumentFraming framing;  // decides the framed lengths counted
};

struct SourceCursor {
  int64_t epoch = 0;
  int64_t next_doc = 0;    // index into this epoch's shuffled order
  int64_t doc_offset = 0;  // framed tokens of that document already drawn
  int64_t drawn_tokens = 0;
  int64_t drawn_examples = 0;
  bool operator==(const SourceCursor&) const = default;
};

struct MixerPosition {
  uint64_t config_hash = 0;
  int64_t pieces = 0;  // drawn so far
  bool ended = false;
  std::vector<SourceCursor> sources;
  bool operator==(const MixerPosition&) const = default;

  // A flat list of integers (for a checkpoint): version, hash, pieces, ended, count, then five
  // per source. from_ints() throws on a list of the wrong version or length.
  std::vector<int64_t> to_ints() const;
  static MixerPosition from_ints(std::span<const int64_t> ints);
};

class Mixer : public PieceStream {
 public:
  // Throws when a weight or fraction is out of range, no source has weight > 0, or a weighted
  // source has no training documents.
  Mixer(std::vector<MixSource> sources, MixerConfig config);

  bool next(Piece& piece) override;
  const MixerPosition& position() const { return pos_; }
  void seek(const MixerPosition& position);

  int num_sources() const { return static_cast<int>(sources_.size()); }
  const MixSource& source(int i) const { return sources_[i]; }
  double normalized_weight(int i) const { return weights_[i]; }
  const DocumentSplit& split(int i) const { return splits_[i]; }
  const MixerConfig& config() const { return config_; }

 private:
  void shuffle_epoch(int s);
  bool may_start_epoch(int64_t epoch) const;  // a source may start its pass `epoch` (0-based)
  int64_t next_piece_length(int s) const;

  std::vector<MixSource> sources_;
  MixerConfig config_;
  std::vector<double> weights_;
  std::vector<DocumentSplit> splits_;
  std::vector<std::vector<int64_t>> order_;  // this epoch's shuffled training documents
  std::vector<uint64_t> name_hash_;
  MixerPosition pos_;
};

}  // namespace loom
