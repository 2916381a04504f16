// Checks a recipe after every value is read (file, then overrides): required keys, ranges and
// cross-key rules; then normalizes it (data.mix applied to the source weights, "all-linear"
// expanded). Every message names the key and where its value was set.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <set>

#include "autograd/check.h"
#include "lora/targets.h"
#include "trainer/recipe_fields.h"

namespace loom::recipe_detail {
namespace {

class Checker {
 public:
  Checker(const Origins& origins, const std::string& source_name)
      : origins_(origins), source_name_(source_name) {}

  // Where `key` was set: its own origin, else the nearest enclosing one (a data source's
  // item), else the recipe file (a default).
  std::string where(const std::string& key) const {
    // A key set through its children only (data.mix by mix.a=0): where the last of them was
    // set, so that an override is blamed, not the recipe file.
    if (origins_.find(key) == origins_.end()) {
      const std::string prefix = key + ".";
      std::string found;
      for (auto it = origins_.lower_bound(prefix);
           it != origins_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it)
        if (found.empty() || it->second.find("command-line override") != std::string::npos)
          found = it->second;
      if (!found.empty()) return found;
    }
    for (std::string k = key;;) {
      if (auto it = origins_.find(k); it != origins_.end()) return it->second;
      const size_t dot = k.rfind('.');
      if (dot == std::string::npos) return fmt::format("{} (default value)", source_name_);
      k.resize(dot);
    }
  }
  bool was_set(const std::string& key) const { return origins_.count(key) != 0; }

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw Error(fmt::format("{}: {} {}", where(key), key, message));
  }
  template <class T>
  void at_least(const std::string& key, T value, T min) const {
    if (value < min) fail(key, fmt::format("must be at least {}, found {}", min, value));
  }
  void positive(const std::string& key, double value) const {
    if (!(value > 0)) fail(key, fmt::format("must be positive, found {}", value));
  }
  // lo <= value < hi (or <= hi when `hi_included`).
  void in_range(const std::string& key, double value, double lo, double hi,
                bool hi_included) const {
    if (!(value >= lo) || !(hi_included ? value <= hi : value < hi))
      fail(key,
           fmt::format("must be in [{}, {}{}, found {}", lo, hi, hi_included ? "]" : ")", value));
  }
  void required(const std::string& key, bool present, const std::string& what) const {
    if (!present && was_set(key))  // emptied by an override (model.path=, data.sources=[])
      throw Error(fmt::format("{}: {} is required ({}) but was set empty", where(key), key, what));
    if (!present)
      throw Error(
          fmt::format("{}: {} is required ({}); set it in the recipe or on the command "
                      "line as {}=...",
                      source_name_, key, what, key));
  }

 private:
  const Origins& origins_;
  const std::string& source_name_;
};

bool valid_source_name(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

void check_model(const Recipe& r, const Checker& c) {
  c.required("model.path", !r.model.path.empty(),
             "the GGUF file or Hugging Face directory to fine-tune");
  if (r.model.base_dtype == ModelRecipe::BaseDType::NF4 && !r.model.double_quant)
    c.fail("model.double_quant",
           "is false, which loom does not support: its NF4 base always double-quantizes the "
           "block absmax values (lora/qlora.h; about 0.4 bits per weight less); set it to true");
}

void check_lora(Recipe& r, const Checker& c) {
  LoraRecipe& l = r.lora;
  c.at_least<int64_t>("lora.rank", l.rank, 1);
  c.positive("lora.alpha", l.alpha);
  c.in_range("lora.dropout", l.dropout, 0.0, 1.0, false);
  if (l.targets.empty() && l.target_regex.empty())
    c.fail("lora.targets", "is empty and lora.target_regex is not set: nothing would be adapted");
  // PEFT's target_modules is a list or a regex: a regex given alone replaces the default list
  // (all seven projections). Written beside an explicit lora.targets it adds to that list.
  if (!l.target_regex.empty() && !c.was_set("lora.targets")) l.targets.clear();
  if (!l.target_regex.empty() && !l.layers.empty())
    c.fail("lora.layers",
           fmt::format("cannot be combined with lora.target_regex (set at {}): PEFT ignores "
                       "layers_to_transform for a regex target, so the exported adapter would "
                       "mean other modules; put the block numbers in the regex instead, e.g. "
                       "'model\\.layers\\.(0|1)\\..*'",
                       c.where("lora.target_regex")));
  // "all-linear" stands for the seven projections; keep the written order otherwise.
  std::vector<std::string> targets;
  auto add = [&](const std::string& t) {
    if (std::find(targets.begin(), targets.end(), t) == targets.end()) targets.push_back(t);
  };
  for (const std::string& t : l.targets) {
    if (t == "all-linear") {
      for (const std::string& m : llama_linear_modules()) add(m);
    } else {
      add(t);
    }
  }
  l.targets = std::move(targets);
  std::set<int64_t> layers;
  for (int64_t layer : l.layers) {
    if (layer < 0)
      c.fail("lora.layers", fmt::format("must hold block indices >= 0, found {}", layer));
    if (!layers.insert(layer).second)
      c.fail("lora.layers", fmt::format("lists block {} twice", layer));
  }
  // Regexes compile (PCRE2, Python syntax) here, where the line can still be named.
  auto compiles = [&](const std::string& key, const std::string& pattern,
                      const std::function<void()>& check) {
    try {
      check();
    } catch (const Error& e) {
      const std::string why = e.what();
      const size_t at = why.find("is not a valid regex");
      if (at == std::string::npos)
        c.fail(key, pattern.empty() ? std::string("is an empty pattern") : why);
      c.fail(key, fmt::format("'{}' {}", pattern, why.substr(at)));
    }
  };
  if (!l.target_regex.empty())
    compiles("lora.target_regex", l.target_regex, [&] {
      LoraTargets t;
      t.regex = l.target_regex;
      validate_targets(t);
    });
  for (const auto& [pattern, rank] : l.rank_pattern)
    compiles("lora.rank_pattern." + pattern, pattern,
             [&, key = pattern] { validate_pattern_keys({key}, "rank_pattern"); });
  for (const auto& [pattern, alpha] : l.alpha_pattern)
    compiles("lora.alpha_pattern." + pattern, pattern,
             [&, key = pattern] { validate_pattern_keys({key}, "alpha_pattern"); });
  for (const auto& [pattern, rank] : l.rank_pattern)
    if (rank < 1)
      c.fail("lora.rank_pattern." + pattern, fmt::format("must be >= 1, found {}", rank));
  for (const auto& [pattern, alpha] : l.alpha_pattern)
    c.positive("lora.alpha_pattern." + pattern, alpha);
}

void check_data(Recipe& r, const Checker& c) {
  DataRecipe& d = r.data;
  c.required("data.sources", !d.sources.empty(),
             "a list of corpora, each with at least a name and a path");
  std::set<std::string> names;
  for (size_t i = 0; i < d.sources.size(); ++i) {
    const DataSourceRecipe& s = d.sources[i];
    const std::string key = fmt::format("data.sources.{}", i);
    if (s.name.empty()) c.fail(key + ".name", "is required: every data source needs a name");
    if (!valid_source_name(s.name))
      c.fail(key + ".name",
             fmt::format("\"{}\" may only hold letters, digits, '_' and '-' (it is used in "
                         "mix.<name>=... overrides and in metric names)",
                         s.name));
    if (!names.insert(s.name).second)
      c.fail(key + ".name",
             fmt::format("\"{}\" names two data sources; names must be unique", s.name));
    if (s.path.empty()) c.fail(key + ".path", "is required: the file or glob to read");
    const bool renders_chat =
        s.format == DataSourceRecipe::Format::Chat ||
        (s.format == DataSourceRecipe::Format::Instruct && s.instruct_as_chat);
    // Only a value other than the default: a printed recipe (a run's recipe.yaml) lists every
    // key of every source.
    const DataSourceRecipe defaults;
    const auto chat_only = [&](const std::string& field) {
      c.fail(key + "." + field,
             fmt::format("applies to format chat, or instruct with instruct_as_chat: true; "
                         "source '{}' is format {}{}",
                         s.name, to_string(s.format),
                         s.format == DataSourceRecipe::Format::Instruct
                             ? " without instruct_as_chat, where the prompt and completion are "
                               "joined as they are (set instruct_as_chat: true to render them "
                               "as a user / assistant exchange)"
                             : ""));
    };
    // Recipes printed before chat_template's default became "model" list "chatml" for every
    // source; both are taken as the default.
    if (!renders_chat && s.chat_template != defaults.chat_template && s.chat_template != "chatml")
      chat_only("chat_template");
    if (!renders_chat && s.default_system != defaults.default_system) chat_only("default_system");
    c.at_least(key + ".weight", s.weight, 0.0);
    c.in_range(key + ".heldout_fraction", s.heldout_fraction, 0.0, 1.0, false);
  }
  for (const auto& [name, weight] : d.mix) {
    const std::string key = "data.mix." + name;
    auto it = std::find_if(d.sources.begin(), d.sources.end(),
                           [&](const DataSourceRecipe& s) { return s.name == name; });
    if (it == d.sources.end()) {
      std::vector<std::string> all(names.begin(), names.end());
      c.fail(key, fmt::format("names no data source; did you mean \"{}\"? (sources: {})",
                              nearest_key(name, all), join(all)));
    }
    c.at_least(key, weight, 0.0);
    it->weight = weight;
  }
  const bool any_weight = std::any_of(d.sources.begin(), d.sources.end(),
                                      [](const DataSourceRecipe& s) { return s.weight > 0; });
  if (!any_weight)
    c.fail(d.mix.empty() ? "data.sources" : "data.mix",
           "gives every source weight 0: at least one must be positive");
  c.at_least<int64_t>("data.seq_len", d.seq_len, 2);
}

void check_train(const Recipe& r, const Checker& c) {
  const TrainRecipe& t = r.train;
  c.at_least<int64_t>("train.epochs", t.epochs, 0);
  if (t.epochs == 0) {
    c.required("train.steps", c.was_set("train.steps"),
               "the number of optimizer steps to run, or set train.epochs");
    c.at_least<int64_t>("train.steps", t.steps, 1);
  } else {
    c.at_least<int64_t>("train.steps", t.steps, 0);
    if (r.data.on_exhausted == DataRecipe::OnExhausted::Stop)
      c.fail("train.epochs",
             fmt::format("({}) needs data.on_exhausted: repeat (set at {} to stop, which ends the "
                         "run after the first pass); leave data.on_exhausted at repeat, or drop "
                         "train.epochs",
                         t.epochs, c.where("data.on_exhausted")));
  }
  c.at_least<int64_t>("train.batch_size", t.batch_size, 1);
  c.at_least<int64_t>("train.grad_accum", t.grad_accum, 1);
  c.positive("train.lr", t.lr);
  c.at_least<int64_t>("train.warmup_steps", t.warmup_steps, 0);
  // With train.epochs the step count is known once the data is read: the run checks it there.
  if (t.steps > 0 && t.warmup_steps > t.steps)
    c.fail("train.warmup_steps",
           fmt::format("({}) is more than train.steps ({}, set at {}); lower train.warmup_steps "
                       "too (train.warmup_steps=N)",
                       t.warmup_steps, t.steps, c.where("train.steps")));
  c.in_range("train.min_lr_ratio", t.min_lr_ratio, 0.0, 1.0, true);
  c.at_least("train.weight_decay", t.weight_decay, 0.0);
  c.in_range("train.adam_beta1", t.adam_beta1, 0.0, 1.0, false);
  c.in_range("train.adam_beta2", t.adam_beta2, 0.0, 1.0, false);
  c.positive("train.adam_eps", t.adam_eps);
  c.at_least("train.clip_grad_norm", t.clip_grad_norm, 0.0);
  c.at_least<int64_t>("train.seed", t.seed, 0);
  c.at_least<int64_t>("train.max_skipped_steps", t.max_skipped_steps, 0);
}

void check_run(const Recipe& r, const Checker& c) {
  c.at_least<int64_t>("eval.every", r.eval.every, 0);
  c.at_least<int64_t>("eval.batches", r.eval.batches, 0);
  c.at_least<int64_t>("checkpoint.every", r.checkpoint.every, 0);
  c.at_least<int64_t>("checkpoint.keep_last", r.checkpoint.keep_last, 1);
  c.at_least<int64_t>("output.log_every", r.output.log_every, 1);
  std::set<std::string> formats;
  for (const std::string& f : r.output.export_formats)
    if (!formats.insert(f).second) c.fail("output.export", fmt::format("lists {} twice", f));
}

}  // namespace

void validate_recipe(Recipe& recipe, const Origins& origins, const std::string& source_name) {
  const Checker checker(origins, source_name);
  check_model(recipe, checker);
  check_lora(recipe, checker);
  check_data(recipe, checker);
  check_train(recipe, checker);
  check_run(recipe, checker);
}

}  // namespace loom::recipe_detail
