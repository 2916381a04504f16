// Attaching adapters from a LoraConfig; the parameters under PEFT's names (lora/lora_model.h).
#include "lora/lora_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "autograd/check.h"
#include "lora/pissa.h"

namespace loom {

namespace {

constexpr std::pair<LoraInit, std::string_view> kInitNames[] = {
    {LoraInit::Kaiming, "kaiming"}, {LoraInit::Gaussian, "gaussian"}, {LoraInit::Pissa, "pissa"}};

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

template <class T>
std::string patterns_str(const NamePatterns<T>& patterns) {
  std::string out;
  for (const auto& [key, value] : patterns)
    out += fmt::format("{}{}: {}", out.empty() ? "" : ", ", key, value);
  return fmt::format("{{{}}}", out);
}

}  // namespace

std::string_view lora_init_name(LoraInit init) {
  for (const auto& [value, name] : kInitNames)
    if (value == init) return name;
  LOOM_FAIL("lora: unknown LoraInit {}", static_cast<int>(init));
}

LoraInit parse_lora_init(std::string_view name) {
  for (const auto& [value, n] : kInitNames)
    if (n == name) return value;
  throw Error(fmt::format("lora: unknown init '{}': expected kaiming, gaussian or pissa", name));
}

void LoraConfig::validate() const {
  if (rank <= 0) throw Error(fmt::format("lora: rank must be positive, got {}", rank));
  if (!(alpha > 0.0) || !std::isfinite(alpha))
    throw Error(fmt::format("lora: alpha must be positive, got {}", alpha));
  if (!(dropout >= 0.0f && dropout < 1.0f))
    throw Error(fmt::format("lora: dropout must be in [0, 1), got {}", dropout));
  validate_targets(targets);
  std::vector<std::string> keys;
  for (const auto& [key, value] : rank_pattern) {
    if (value <= 0)
      throw Error(
          fmt::format("lora: rank_pattern '{}' gives rank {}; ranks must be positive", key, value));
    keys.push_back(key);
  }
  validate_pattern_keys(keys, "rank_pattern");
  keys.clear();
  for (const auto& [key, value] : alpha_pattern) {
    if (!(value > 0.0) || !std::isfinite(value))
      throw Error(fmt::format("lora: alpha_pattern '{}' gives alpha {}; alphas must be positive",
                              key, value));
    keys.push_back(key);
  }
  validate_pattern_keys(keys, "alpha_pattern");
}

std::string LoraConfig::describe() const {
  std::vector<std::string> layer_list;
  for (int64_t l : targets.layers) layer_list.push_back(std::to_string(l));
  std::string s;
  s += fmt::format("lora.rank: {}\n", rank);
  s += fmt::format("lora.alpha: {}\n", alpha);
  s += fmt::format("lora.scale: {} ({})\n", lora_scale(alpha, rank, rslora),
                   rslora ? "rsLoRA, alpha / sqrt(rank)" : "alpha / rank");
  s += fmt::format("lora.dropout: {}\n", dropout);
  if (targets.regex.empty())
    s += fmt::format("lora.target_modules: [{}]\n", join(targets.modules));
  else
    s += fmt::format("lora.target_regex: {}\n", targets.regex);
  s += fmt::format("lora.layers: {}\n",
                   layer_list.empty() ? std::string("all") : fmt::format("[{}]", join(layer_list)));
  s += fmt::format("lora.rslora: {}\n", rslora);
  s += fmt::format("lora.dora: {}\n", dora);
  s += fmt::format("lora.init: {}\n", lora_init_name(init));
  s += fmt::format("lora.rank_pattern: {}\n", patterns_str(rank_pattern));
  s += fmt::format("lora.alpha_pattern: {}\n", patterns_str(alpha_pattern));
  s += fmt::format("lora.base_dtype: {}\n", base_dtype_name(base_dtype));
  s += fmt::format("lora.seed: {}\n", seed);
  return s;
}

std::string LoraConfig::summary() const {
  std::vector<std::string> layer_list;
  for (int64_t l : targets.layers) layer_list.push_back(std::to_string(l));
  return fmt::format(
      "{} r={} alpha={} (scale {} = {:.6g}) on {} in {}{}", dora ? "DoRA" : "LoRA", rank, alpha,
      rslora ? "alpha/sqrt(r)" : "alpha/r", lora_scale(alpha, rank, rslora),
      targets.regex.empty() ? fmt::format("[{}]", join(targets.modules)) : "regex " + targets.regex,
      layer_list.empty() ? std::string("every layer")
                         : fmt::format("layers [{}]", join(layer_list)),
      rank_pattern.empty() && alpha_pattern.empty()
          ? std::string()
          : fmt::format(" ({} rank / {} alpha patterns)", rank_pattern.size(),
                        alpha_pattern.size()));
}

void check_lm_head_options(const LoraConfig& config) {
  // The LM head (often the token embedding's tensor too) keeps its weight: no init that
  // rewrites the base, no DoRA (its row norms over a vocabulary-sized weight).
  if (config.dora)
    throw Error(
        "lora: DoRA on the LM head (lm_head) is not supported: use plain LoRA there, or leave "
        "lm_head out of the targets");
  if (config.init == LoraInit::Pissa)
    throw Error(
        "lora: PiSSA init on the LM head (lm_head) is not supported (it would rewrite the "
        "output weight, which SmolLM2-style models share with the token embedding): use "
        "init kaiming or gaussian, or leave lm_head out of the targets");
}

LoraModel::LoraModel(LlamaModel& model, LoraConfig config)
    : model_(&model), config_(std::move(config)), runtime_(std::make_shared<LoraRuntime>()) {
  config_.validate();
  const std::vector<Linear*> projections = model.adaptable();
  const std::vector<Linear*> targets =
      select_targets(projections, config_.targets, model.config().n_layers);
  for (Linear* p : targets) {
    if (p->adapter)
      throw Error(
          fmt::format("lora: projection '{}' already has an adapter; detach it first", p->hf_name));
    if (p->kind == Projection::Output) check_lm_head_options(config_);
  }
  for (Linear* p : projections) {
    // The LM head is never converted (base_dtype applies to the blocks' projections).
    const bool head = p->kind == Projection::Output;
    const DType before = p->weight.dtype();
    if (!head) conversion_.bytes_before += storage_bytes(before, p->weight.numel());
    const DType storage = head ? before : base_storage_dtype(config_.base_dtype, before);
    const bool targeted = std::find(targets.begin(), targets.end(), p) != targets.end();
    if (!targeted) {
      p->weight = convert_weight(p->weight, storage);
    } else {
      LoraModuleOptions o;
      o.rank = pattern_value(config_.rank_pattern, p->hf_name, config_.rank);
      o.alpha = pattern_value(config_.alpha_pattern, p->hf_name, config_.alpha);
      o.rslora = config_.rslora;
      o.dropout = config_.dropout;
      o.seed = config_.seed;
      std::shared_ptr<LoraAdapter> adapter = config_.dora
                                                 ? std::make_shared<DoraAdapter>(*p, o, runtime_)
                                                 : std::make_shared<LoraAdapter>(*p, o, runtime_);
      switch (config_.init) {
        case LoraInit::Pissa:
          pissa_init(*p, *adapter, storage);  // the residual is stored as `storage`
          break;
        case LoraInit::Kaiming:
          p->weight = convert_weight(p->weight, storage);
          adapter->init_kaiming_uniform(config_.seed);
          break;
        case LoraInit::Gaussian:
          p->weight = convert_weight(p->weight, storage);
          adapter->init_gaussian(config_.seed);
          break;
      }
      if (auto* dora = dynamic_cast<DoraAdapter*>(adapter.get())) dora->init_magnitude(*p);
      p->adapter = adapter;
      LoraModule module{p, adapter, {}, {}};
      if (config_.init == LoraInit::Pissa) {
        module.pissa_a0 = adapter->lora_a().to_vector();
        module.pissa_b0 = adapter->lora_b().to_vector();
      }
      modules_.push_back(std::move(module));
    }
    if (head) continue;
    conversion_.bytes_after += storage_bytes(p->weight.dtype(), p->weight.numel());
    if (p->weight.dtype() != before) ++conversion_.converted;
  }
}

const LoraModule* LoraModel::head_module() const {
  for (const LoraModule& m : modules_)
    if (m.linear->kind == Projection::Output) return &m;
  return nullptr;
}

std::vector<LoraParameter> LoraModel::parameters() const {
  std::vector<LoraParameter> out;
  for (const LoraModule& m : modules_) {
    out.push_back({m.adapter->lora_a().name(), m.adapter->lora_a()});
    out.push_back({m.adapter->lora_b().name(), m.adapter->lora_b()});
    if (const auto* dora = dynamic_cast<const DoraAdapter*>(m.adapter.get()))
      out.push_back({dora->magnitude().name(), dora->magnitude()});
  }
  return out;
}

int64_t LoraModel::trainable_parameter_count() const {
  int64_t n = 0;
  for (const LoraParameter& p : parameters()) n += p.tensor.numel();
  return n;
}

Tensor LoraModel::parameter(std::string_view name) const {
  const std::vector<LoraParameter> params = parameters();
  for (const LoraParameter& p : params)
    if (p.name == name) return p.tensor;
  // The closest name by common prefix + suffix, to point at a typo or a naming mismatch.
  std::string best;
  size_t best_score = 0;
  for (const LoraParameter& p : params) {
    size_t pre = 0, suf = 0;
    while (pre < p.name.size() && pre < name.size() && p.name[pre] == name[pre]) ++pre;
    while (suf < p.name.size() && suf < name.size() &&
           p.name[p.name.size() - 1 - suf] == name[name.size() - 1 - suf])
      ++suf;
    if (pre + suf > best_score) {
      best_score = pre + suf;
      best = p.name;
    }
  }
  throw Error(fmt::format("lora: no adapter parameter named '{}' ({} parameters{})", name,
                          params.size(),
                          best.empty() ? "" : fmt::format("; the closest is '{}'", best)));
}

void LoraModel::set_parameter(std::string_view name, const std::vector<float>& values) {
  const Tensor t = parameter(name);
  if (static_cast<int64_t>(values.size()) != t.numel())
    throw Error(fmt::format("lora: parameter '{}' is {} ({} values), {} values given", name,
                            shape_str(t.shape()), t.numel(), values.size()));
  std::copy(values.begin(), values.end(), t.data_f32());
}

void LoraModel::load_parameters(
    const std::vector<std::pair<std::string, std::vector<float>>>& values, bool strict) {
  // Everything is checked before anything is written: a failed load leaves the adapters as
  // they were.
  std::map<std::string, int> seen;
  std::vector<Tensor> targets;
  for (const auto& [name, v] : values) {
    const Tensor t = parameter(name);
    if (static_cast<int64_t>(v.size()) != t.numel())
      throw Error(fmt::format("lora: parameter '{}' is {} ({} values), {} values given", name,
                              shape_str(t.shape()), t.numel(), v.size()));
    if (++seen[name] > 1) throw Error(fmt::format("lora: parameter '{}' given twice", name));
    // A NaN or Inf would not fail anything later: evaluations would print a number (or nan),
    // generation would print nothing, and training would skip every step.
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        throw Error(
            fmt::format("lora: parameter '{}' holds {} at index {} (of {} values): the "
                        "adapter is damaged, or the training that made it diverged",
                        name, v[i], i, v.size()));
    targets.push_back(t);
  }
  if (strict) {
    const std::vector<LoraParameter> params = parameters();
    for (const LoraParameter& p : params)
      if (!seen.count(p.name))
        throw Error(
            fmt::format("lora: parameter '{}' missing from the {} values given (the "
                        "adapter has {} parameters)",
                        p.name, values.size(), params.size()));
  }
  for (size_t i = 0; i < values.size(); ++i)
    std::copy(values[i].second.begin(), values[i].second.end(), targets[i].data_f32());
}

void LoraModel::zero_grad() {
  for (const LoraParameter& p : parameters()) {
    Tensor t = p.tensor;
    t.zero_grad();
  }
}

void LoraModel::set_training(bool training) {
  runtime_->training.store(training);
}
void LoraModel::set_dropout_step(uint64_t step) {
  runtime_->dropout_step.store(step);
}

void LoraModel::merge(MergeDType dtype) {
  for (const LoraModule& m : modules_) merge_adapter(*m.linear, dtype);
}

void LoraModel::unmerge() {
  for (const LoraModule& m : modules_) unmerge_adapter(*m.linear);
}

bool LoraModel::merged() const {
  return !modules_.empty() && std::all_of(modules_.begin(), modules_.end(),
                                          [](const LoraModule& m) { return m.adapter->merged(); });
}

void LoraModel::detach() {
  for (const LoraModule& m : modules_)
    if (m.linear->adapter == m.adapter) m.linear->adapter.reset();
}

std::string LoraModel::summary() const {
  std::string s = fmt::format(
      "lora: {} modules{}, {} trainable parameters; base projections {} "
      "({} converted, {:.1f} MB -> {:.1f} MB)\n",
      modules_.size(), config_.dora ? " (DoRA)" : "", trainable_parameter_count(),
      base_dtype_name(config_.base_dtype), conversion_.converted, conversion_.bytes_before / 1e6,
      conversion_.bytes_after / 1e6);
  for (const LoraModule& m : modules_)
    s += fmt::format("  {}: rank {}, alpha {}, scale {:.6g}, base {}\n", m.linear->hf_name,
                     m.adapter->rank(), m.adapter->alpha(), m.adapter->scale(),
                     dtype_name(m.linear->weight.dtype()));
  return s;
}

}  // namespace loom
