// The data settings of a run in one value, and the steps from them to a training stream and
// evaluation streams: every source tokenized (or mapped from the cache), the mixer and packing
// configured, and the settings -- defaults included -- described for the start of a run.
// The trainer maps a recipe's `data.*` keys onto DataConfig.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/heldout.h"
#include "data/mixer.h"
#include "data/packing.h"
#include "data/source_config.h"
#include "data/token_cache.h"
#include "data/train_stream.h"

namespace loom {

class Tokenizer;

struct DataConfig {
  std::vector<SourceConfig> sources;  // weight / heldout_fraction per source
  MixBy mix_by = MixBy::Tokens;
  OnExhausted on_exhausted = OnExhausted::Repeat;
  int64_t seq_len = 512;
  int64_t batch_size = 1;
  bool train_on_prompt = false;
  bool packing = true;
  uint64_t seed = 0;        // shuffles
  uint64_t split_seed = 0;  // held-out split
  int64_t max_piece_tokens = 512;
  TokenCacheOptions cache;
};

std::string_view mix_by_name(MixBy m);              // "tokens", "examples"
std::string_view on_exhausted_name(OnExhausted o);  // "repeat", "stop"
// Throw naming `what` (e.g. "recipe key data.mix_by") and the accepted values.
MixBy parse_mix_by(std::string_view name, std::string_view what);
OnExhausted parse_on_exhausted(std::string_view name, std::string_view what);

// Everything a run needs, tokenized.
struct LoadedData {
  std::vector<MixSource> sources;
  std::vector<TokenCacheReport> cache_reports;  // one per source
  MixerConfig mixer;
  PackingConfig packing;

  TrainStream train_stream() const;
  // The held-out documents of source i (empty stream when it has none).
  EvalStream eval_stream(int source) const;
};

// Checks the settings (unique non-empty names, seq_len and batch_size >= 1, ...), then loads
// each source through the token cache.
LoadedData load_data(const DataConfig& config, const Tokenizer& tokenizer);

// Multi-line description of every setting, for the start of a run.
std::string describe_data_config(const DataConfig& config);
// One line per source: delivered tokens and documents, share vs target, epochs.
std::string describe_delivery(const std::vector<SourceDelivery>& delivered);

}  // namespace loom
