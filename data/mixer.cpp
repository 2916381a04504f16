// Mixer: weighted fair queueing over sources, per-epoch shuffles, position save / seek.
#include "data/mixer.h"

#include <fmt/format.h>

#include <bit>
#include <cmath>

#include "autograd/check.h"
#include "data/hash.h"
#include "data/random.h"

namespace loom {
namespace {

constexpr int64_t kPositionVersion = 0x4D495831;  // "MIX1"
constexpr size_t kIntsPerSource = 5;

}  // namespace

std::vector<int64_t> MixerPosition::to_ints() const {
  std::vector<int64_t> out = {kPositionVersion, std::bit_cast<int64_t>(config_hash), pieces,
                              ended ? 1 : 0, static_cast<int64_t>(sources.size())};
  for (const auto& s : sources) {
    out.insert(out.end(), {s.epoch, s.next_doc, s.doc_offset, s.drawn_tokens, s.drawn_examples});
  }
  return out;
}

MixerPosition MixerPosition::from_ints(std::span<const int64_t> ints) {
  if (ints.size() < 5 || ints[0] != kPositionVersion || ints[4] < 0 ||
      ints.size() != 5 + kIntsPerSource * static_cast<size_t>(ints[4])) {
    throw Error(
        fmt::format("mixer position: {} integers, not a saved mixer position of this "
                    "version (expected {} then 4 + 5 per source); the checkpoint is from "
                    "another loom version or damaged",
                    ints.size(), kPositionVersion));
  }
  MixerPosition p;
  p.config_hash = std::bit_cast<uint64_t>(ints[1]);
  p.pieces = ints[2];
  p.ended = ints[3] != 0;
  for (size_t i = 5; i < ints.size(); i += kIntsPerSource) {
    p.sources.push_back({ints[i], ints[i + 1], ints[i + 2], ints[i + 3], ints[i + 4]});
  }
  return p;
}

Mixer::Mixer(std::vector<MixSource> sources, MixerConfig config)
    : sources_(std::move(sources)), config_(config) {
  if (sources_.empty()) throw Error("mixer: no data sources");
  if (config_.max_piece_tokens < 1) {
    throw Error(fmt::format("mixer: max_piece_tokens must be at least 1, got {}",
                            config_.max_piece_tokens));
  }
  LOOM_CHECK(config_.framing.eos_id >= 0, "mixer: the framing needs an EOS id");
  double total = 0;
  for (const auto& s : sources_) {
    LOOM_CHECK(s.data != nullptr, "mixer: a source without data");
    if (!(s.weight >= 0.0) || !std::isfinite(s.weight)) {
      throw Error(fmt::format("mixer: source '{}' has weight {}, expected a number >= 0",
                              s.data->name(), s.weight));
    }
    total += s.weight;
  }
  if (total <= 0.0) {
    throw Error("mixer: every source has weight 0; give at least one source a positive weight");
  }
  Hasher64 h(0x313C3E2ull);
  h.update_u64(static_cast<uint64_t>(config_.mix_by));
  h.update_u64(static_cast<uint64_t>(config_.on_exhausted));
  h.update_u64(config_.seed);
  h.update_u64(config_.split_seed);
  h.update_u64(static_cast<uint64_t>(config_.max_piece_tokens));
  h.update_u64(static_cast<uint64_t>(static_cast<int64_t>(config_.framing.bos_id)));
  h.update_u64(static_cast<uint64_t>(static_cast<int64_t>(config_.framing.eos_id)));
  for (const auto& s : sources_) {
    const std::string what = fmt::format("mixer: source '{}'", s.data->name());
    weights_.push_back(s.weight / total);
    splits_.push_back(
        split_documents(s.data->num_documents(), s.heldout_fraction, config_.split_seed, what));
    if (s.weight > 0 && splits_.back().train.empty()) {
      throw Error(fmt::format(
          "{}: weight {} but no training documents: all {} of its documents are held out for "
          "evaluation (heldout_fraction {} holds out at least one){}; lower heldout_fraction "
          "(0 trains on everything) or set weight 0",
          what, s.weight, s.data->num_documents(), s.heldout_fraction,
          s.data->num_documents() <= 2
              ? ". A text source is cut into documents at blank lines (a file without any is "
                "one document; see the source's separator key)"
              : ""));
    }
    name_hash_.push_back(hash64(s.data->name()));
    h.update_string(s.data->name());
    h.update_u64(std::bit_cast<uint64_t>(s.weight));
    h.update_u64(std::bit_cast<uint64_t>(s.heldout_fraction));
    h.update_u64(static_cast<uint64_t>(s.data->num_documents()));
    h.update_u64(static_cast<uint64_t>(s.data->num_tokens()));
  }
  pos_.config_hash = h.digest();
  pos_.sources.resize(sources_.size());
  order_.resize(sources_.size());
  for (int s = 0; s < num_sources(); ++s) shuffle_epoch(s);
}

void Mixer::shuffle_epoch(int s) {
  order_[s] = splits_[s].train;
  const uint64_t seed = hash_combine(hash_combine(config_.seed, name_hash_[s]),
                                     static_cast<uint64_t>(pos_.sources[s].epoch));
  deterministic_shuffle(order_[s], seed);
}

int64_t Mixer::next_piece_length(int s) const {
  const SourceCursor& c = pos_.sources[s];
  if (c.next_doc >= static_cast<int64_t>(order_[s].size())) return 1;  // exhausted (Stop)
  const int64_t left =
      framed_length(*sources_[s].data, order_[s][c.next_doc], config_.framing) - c.doc_offset;
  return config_.mix_by == MixBy::Tokens ? std::min(left, config_.max_piece_tokens) : left;
}

bool Mixer::may_start_epoch(int64_t epoch) const {
  return config_.on_exhausted == OnExhausted::Repeat &&
         (config_.max_epochs <= 0 || epoch < config_.max_epochs);
}

bool Mixer::next(Piece& piece) {
  // An ended stream is not short-cut: the schedule picks the same exhausted source again (the
  // cursors have not moved) and ends again, unless max_epochs now lets it start another pass.
  int best = -1;
  double best_cost = 0;
  for (int s = 0; s < num_sources(); ++s) {
    if (weights_[s] <= 0) continue;
    const SourceCursor& c = pos_.sources[s];
    const double count = config_.mix_by == MixBy::Tokens
                             ? static_cast<double>(c.drawn_tokens + next_piece_length(s))
                             : static_cast<double>(c.drawn_examples + 1);
    const double cost = count / weights_[s];
    if (best < 0 || cost < best_cost) best = s, best_cost = cost;
  }
  SourceCursor& c = pos_.sources[best];
  const auto n_train = static_cast<int64_t>(order_[best].size());
  if (c.next_doc >= n_train) {  // Stop, or max_epochs passes done: Repeat rolls over eagerly below
    if (!may_start_epoch(c.epoch + 1)) {
      pos_.ended = true;
      return false;
    }
    // A position saved at the end of max_epochs, resumed with more of them.
    ++c.epoch;
    c.next_doc = 0;
    shuffle_epoch(best);
    pos_.ended = false;
  }
  const int64_t doc = order_[best][c.next_doc];
  const int64_t len = framed_length(*sources_[best].data, doc, config_.framing);
  piece.source = best;
  piece.doc = doc;
  piece.begin = c.doc_offset;
  piece.end = config_.mix_by == MixBy::Tokens
                  ? std::min(len, c.doc_offset + config_.max_piece_tokens)
                  : len;
  c.drawn_tokens += piece.end - piece.begin;
  if (piece.begin == 0) ++c.drawn_examples;
  c.doc_offset = piece.end;
  if (c.doc_offset == len) {
    c.doc_offset = 0;
    ++c.next_doc;
    if (c.next_doc == n_train && may_start_epoch(c.epoch + 1)) {
      ++c.epoch;
      c.next_doc = 0;
      shuffle_epoch(best);
    }
  }
  ++pos_.pieces;
  return true;
}

void Mixer::seek(const MixerPosition& position) {
  if (position.config_hash != pos_.config_hash) {
    throw Error(fmt::format(
        "mixer: the saved position was made with another data configuration (hash {} vs {} now: "
        "sources, their sizes, weights, held-out fractions, seeds, mix_by, on_exhausted or "
        "max_piece_tokens changed); resume with the original data settings",
        hex64(position.config_hash), hex64(pos_.config_hash)));
  }
  if (position.sources.size() != sources_.size()) {
    throw Error(fmt::format("mixer: the saved position has {} sources, the mixer {}",
                            position.sources.size(), sources_.size()));
  }
  for (int s = 0; s < num_sources(); ++s) {
    const SourceCursor& c = position.sources[s];
    const auto n_train = static_cast<int64_t>(splits_[s].train.size());
    const bool ok = c.epoch >= 0 && c.next_doc >= 0 && c.next_doc <= n_train && c.doc_offset >= 0 &&
                    c.drawn_tokens >= 0 && c.drawn_examples >= 0;
    if (!ok) {
      throw Error(
          fmt::format("mixer: the saved position of source '{}' is out of range (epoch "
                      "{}, document {} of {}, offset {})",
                      sources_[s].data->name(), c.epoch, c.next_doc, n_train, c.doc_offset));
    }
  }
  pos_ = position;
  for (int s = 0; s < num_sources(); ++s) {
    shuffle_epoch(s);
    const SourceCursor& c = pos_.sources[s];
    if (c.next_doc < static_cast<int64_t>(order_[s].size()) &&
        c.doc_offset >= framed_length(*sources_[s].data, order_[s][c.next_doc], config_.framing)) {
      throw Error(
          fmt::format("mixer: the saved position of source '{}' is {} tokens into a "
                      "document that is shorter",
                      sources_[s].data->name(), c.doc_offset));
    }
  }
}

}  // namespace loom
