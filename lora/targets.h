// Which projections get an adapter, and the rank / alpha of each, with PEFT's LoraConfig
// semantics so that a loom recipe and an exported adapter_config.json mean the same modules.
//
// A projection's key is its Hugging Face module name, e.g. "model.layers.3.self_attn.q_proj"
// (Linear::hf_name; GGUF-loaded models have it too). Regexes use Python `re` syntax (PCRE2).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "layers/llama.h"

namespace loom {

struct LoraTargets {
  // PEFT target_modules given as a list: a projection is targeted when its key equals an entry
  // or ends with "." + entry ("q_proj", "self_attn.q_proj", "layers.0.mlp.up_proj"). GGUF stems
  // ("attn_q", "ffn_down") match the GGUF name ("blk.3.attn_q") the same way. The single entry
  // "all-linear" targets all seven projections of every block (PEFT's shorthand: every linear
  // layer but the LM head). The LM head is targeted by name: "lm_head" (GGUF "output"). Every
  // entry must match some projection.
  std::vector<std::string> modules = {"q_proj", "v_proj"};
  // PEFT target_modules given as a string: a regex that must match the WHOLE key
  // (re.fullmatch). When non-empty it replaces `modules`, and must match some projection.
  std::string regex;
  // PEFT layers_to_transform: block indices to adapt; empty means every block. Only with
  // `modules`: PEFT ignores it for a regex target, so loom refuses the pair (put the layers in
  // the regex instead).
  std::vector<int64_t> layers;
};

// PEFT's rank_pattern / alpha_pattern: (key regex, value) in order. For a projection the first
// key with re.match(r"(.*\.)?(key)$", module_key) gives the value, otherwise the default; e.g.
// {"down_proj", 4} or {"layers\.0\.self_attn\.q_proj", 32}. (PEFT >= 0.15 semantics: rank and
// alpha patterns are looked up independently.)
template <class T>
using NamePatterns = std::vector<std::pair<std::string, T>>;

// Checks targets (regexes compile, entries non-empty, "all-linear" alone, no layers with a
// regex); throws naming the field. select_targets calls it.
void validate_targets(const LoraTargets& targets);
// Throws naming the pattern when a key does not compile as a regex.
void validate_pattern_keys(const std::vector<std::string>& keys, std::string_view field);

// The targeted projections among `projections` (in their order). n_layers bounds `layers`.
// Throws when an entry or the regex matches nothing, or a layer is out of range, listing what
// would have been valid.
std::vector<Linear*> select_targets(const std::vector<Linear*>& projections,
                                    const LoraTargets& targets, int64_t n_layers);

// Targets naming exactly `modules` (projections of a model with n_layers blocks), as compactly
// as PEFT's target_modules can: projection names ("q_proj", ...) over a layer set (layers empty
// for every block) when the modules are the full product of the two; otherwise nullopt (the
// caller lists or matches each module by name).
std::optional<LoraTargets> product_targets(const std::vector<const Linear*>& modules,
                                           int64_t n_layers);

// The first key of `keys` matching module_key the PEFT way (see NamePatterns), if any.
std::optional<size_t> match_pattern_key(const std::vector<std::string>& keys,
                                        std::string_view module_key);

template <class T>
T pattern_value(const NamePatterns<T>& patterns, std::string_view module_key, T fallback) {
  std::vector<std::string> keys;
  keys.reserve(patterns.size());
  for (const auto& [key, value] : patterns) keys.push_back(key);
  const std::optional<size_t> hit = match_pattern_key(keys, module_key);
  return hit ? patterns[*hit].second : fallback;
}

}  // namespace loom
