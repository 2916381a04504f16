// Target selection and rank / alpha patterns with PEFT's matching rules (lora/targets.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "lora/targets.h"

#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <set>

#include "autograd/check.h"

namespace loom {

namespace {

constexpr std::string_view kAllLinear = "all-linear";

// A compiled Python-style regex (PCRE2), matched anchored at the start, and optionally at the
// end too (re.fullmatch) -- or only by its own `$` (re.match).
class Regex {
 public:
  Regex(const std::string& pattern, std::string_view what) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), 0, &error,
                          &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      throw Error(fmt::format("lora: {} '{}' is not a valid regex: {} (at offset {})", what,
                              pattern, reinterpret_cast<const char*>(message), offset));
    }
    data_ = pcre2_match_data_create_from_pattern(code_, nullptr);
    LOOM_CHECK(data_ != nullptr, "lora: pcre2_match_data_create_from_pattern failed");
  }
  ~Regex() {
    pcre2_match_data_free(data_);
    pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  bool matches(std::string_view subject, bool full) const {
    const uint32_t options = PCRE2_ANCHORED | (full ? PCRE2_ENDANCHORED : 0u);
    const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(),
                               0, options, data_, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    LOOM_CHECK(rc >= 0, "lora: regex match failed with PCRE2 error {} on '{}'", rc, subject);
    return true;
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* data_ = nullptr;
};

// PEFT's pattern-key regex: re.match(rf"(.*\.)?({key})$", module_key).
std::string pattern_key_regex(const std::string& key) {
  return "(.*\\.)?(" + key + ")$";
}

bool is_all_linear(std::string_view s) {
  if (s.size() != kAllLinear.size()) return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != kAllLinear[i]) return false;
  return true;
}

bool ends_with_component(std::string_view name, std::string_view entry) {
  return name == entry || (name.size() > entry.size() && name.ends_with(entry) &&
                           name[name.size() - entry.size() - 1] == '.');
}

bool entry_matches(const Linear& p, std::string_view entry) {
  return ends_with_component(p.hf_name, entry) || ends_with_component(p.gguf_name, entry);
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string valid_names_hint(std::string_view entry, const std::vector<Linear*>& projections,
                             int64_t n_layers) {
  std::vector<std::string_view> names;
  for (Projection p : kAllProjections) names.push_back(projection_hf_name(p));
  for (Projection p : kAllProjections) names.push_back(projection_gguf_name(p));
  names.push_back(projection_hf_name(Projection::Output));
  names.push_back(projection_gguf_name(Projection::Output));
  // A dotted path whose last part is a projection name: the path itself is what is wrong.
  const size_t dot = entry.rfind('.');
  if (dot != std::string_view::npos &&
      std::find(names.begin(), names.end(), entry.substr(dot + 1)) != names.end())
    return fmt::format("the model's module paths look like '{}' (GGUF: '{}'), blocks 0..{}",
                       projections.empty() ? "" : projections[0]->hf_name,
                       projections.empty() ? "" : projections[0]->gguf_name,
                       std::max<int64_t>(n_layers - 1, 0));
  if (dot != std::string_view::npos) entry = entry.substr(dot + 1);
  std::string_view nearest = names[0];
  for (std::string_view n : names)
    if (edit_distance(entry, n) < edit_distance(entry, nearest)) nearest = n;
  std::string list;
  for (Projection p : kAllProjections)
    list += fmt::format("{}{}", list.empty() ? "" : ", ", projection_hf_name(p));
  return fmt::format(
      "did you mean '{}'? Valid names: {}, lm_head (or GGUF stems attn_q, ..., ffn_down, "
      "output, a longer suffix such as 'self_attn.q_proj', or 'all-linear')",
      nearest, list);
}

}  // namespace

void validate_pattern_keys(const std::vector<std::string>& keys, std::string_view field) {
  for (const std::string& key : keys) {
    if (key.empty()) throw Error(fmt::format("lora: {} has an empty key", field));
    Regex check(pattern_key_regex(key), fmt::format("{} key", field));
  }
}

void validate_targets(const LoraTargets& t) {
  if (!t.regex.empty()) {
    Regex check(t.regex, "target regex (target_modules as a string)");
    if (!t.layers.empty())
      throw Error(fmt::format(
          "lora: layers_to_transform ({} layers) given with the target regex '{}'; PEFT ignores "
          "layers_to_transform for a regex target, so loom refuses the pair: put the layers in "
          "the regex (e.g. 'model\\.layers\\.(0|1)\\..*(q_proj|v_proj)') or list the modules",
          t.layers.size(), t.regex));
    return;
  }
  if (t.modules.empty())
    throw Error(
        "lora: no target modules: give a list (e.g. [q_proj, v_proj]), 'all-linear' or a regex");
  for (const std::string& m : t.modules) {
    if (m.empty()) throw Error("lora: target_modules has an empty entry");
    if (is_all_linear(m) && t.modules.size() != 1)
      throw Error(fmt::format("lora: 'all-linear' must be the only target module, got {} entries",
                              t.modules.size()));
  }
}

std::vector<Linear*> select_targets(const std::vector<Linear*>& projections, const LoraTargets& t,
                                    int64_t n_layers) {
  validate_targets(t);
  for (int64_t l : t.layers)
    if (l < 0 || l >= n_layers)
      throw Error(fmt::format("lora: layers_to_transform has layer {}; the model has layers 0..{}",
                              l, n_layers - 1));
  std::vector<Linear*> out;
  if (!t.regex.empty()) {
    const Regex re(t.regex, "target regex");
    for (Linear* p : projections)
      if (re.matches(p->hf_name, /*full=*/true)) out.push_back(p);
    if (out.empty())
      throw Error(
          fmt::format("lora: the target regex '{}' matches no projection; it must match a "
                      "whole module name such as '{}'",
                      t.regex, projections.empty() ? "" : projections[0]->hf_name));
    return out;
  }
  const bool all = is_all_linear(t.modules[0]);
  if (!all)
    for (const std::string& m : t.modules) {
      if (std::none_of(projections.begin(), projections.end(),
                       [&](const Linear* p) { return entry_matches(*p, m); }))
        throw Error(fmt::format("lora: target module '{}' matches no projection; {}", m,
                                valid_names_hint(m, projections, n_layers)));
      // PEFT drops a module without a layer index when layers_to_transform is given; an entry
      // that names only the LM head would be ignored without a word.
      if (!t.layers.empty() &&
          std::all_of(projections.begin(), projections.end(), [&](const Linear* p) {
            return !entry_matches(*p, m) || p->kind == Projection::Output;
          }))
        throw Error(fmt::format(
            "lora: target module '{}' is the LM head, which is in no layer: layers ({}) would "
            "leave it out (PEFT's layers_to_transform does); drop the layers, or name the "
            "modules of those layers in a regex and the LM head with '|lm_head'",
            m, t.layers.size()));
    }
  for (Linear* p : projections) {
    if (!t.layers.empty() &&
        std::find(t.layers.begin(), t.layers.end(), p->layer) == t.layers.end())
      continue;
    // all-linear is PEFT's: every linear layer but the output layer.
    if ((all && p->kind != Projection::Output) ||
        (!all && std::any_of(t.modules.begin(), t.modules.end(),
                             [&](const std::string& m) { return entry_matches(*p, m); })))
      out.push_back(p);
  }
  return out;
}

std::optional<size_t> match_pattern_key(const std::vector<std::string>& keys,
                                        std::string_view module_key) {
  for (size_t i = 0; i < keys.size(); ++i) {
    const Regex re(pattern_key_regex(keys[i]), "pattern key");
    if (re.matches(module_key, /*full=*/false)) return i;
  }
  return std::nullopt;
}

std::optional<LoraTargets> product_targets(const std::vector<const Linear*>& all_modules,
                                           int64_t n_layers) {
  // The LM head is named on its own; it cannot go with a layer set (see select_targets).
  std::vector<const Linear*> modules;
  size_t heads = 0;
  for (const Linear* m : all_modules) {
    if (m->kind == Projection::Output)
      ++heads;
    else
      modules.push_back(m);
  }
  if (heads > 1) return std::nullopt;
  LoraTargets t;
  t.modules.clear();
  if (!modules.empty()) {
    std::set<Projection> kinds;
    std::set<int64_t> layers;
    std::set<std::pair<Projection, int64_t>> pairs;
    for (const Linear* m : modules) {
      kinds.insert(m->kind);
      layers.insert(m->layer);
      pairs.insert({m->kind, m->layer});
    }
    if (pairs.size() != modules.size() || modules.size() != kinds.size() * layers.size())
      return std::nullopt;
    for (Projection p : kAllProjections)
      if (kinds.count(p)) t.modules.emplace_back(projection_hf_name(p));
    if (static_cast<int64_t>(layers.size()) != n_layers) {
      if (heads > 0) return std::nullopt;
      t.layers.assign(layers.begin(), layers.end());
    }
  }
  if (heads > 0) t.modules.emplace_back(projection_hf_name(Projection::Output));
  if (t.modules.empty()) return std::nullopt;
  return t;
}

}  // namespace loom
