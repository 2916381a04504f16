// LoRA adapter on one projection: forward, inits, dropout seeds (lora/adapter.h).
#include "lora/adapter.h"

#include <fmt/format.h>

#include <cmath>

#include "autograd/check.h"
#include "lora/random.h"

namespace loom {

double lora_scale(double alpha, int64_t rank, bool rslora) {
  LOOM_CHECK(rank > 0, "lora: rank must be positive, got {}", rank);
  return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

uint64_t lora_dropout_seed(uint64_t seed, uint64_t step, int64_t layer, Projection kind) {
  return lora_hash({seed, 0x64726f706f7574ULL /* "dropout" */, step, static_cast<uint64_t>(layer),
                    static_cast<uint64_t>(kind)});
}

std::string peft_parameter_name(std::string_view hf_name, std::string_view suffix) {
  return fmt::format("base_model.model.{}.{}", hf_name, suffix);
}

LoraAdapter::LoraAdapter(const Linear& base, const LoraModuleOptions& options,
                         std::shared_ptr<const LoraRuntime> runtime)
    : options_(options), runtime_(std::move(runtime)) {
  LOOM_CHECK(base.weight.defined() && base.weight.dim() == 2,
             "lora: projection '{}' has no 2-D weight to adapt", base.hf_name);
  if (options.rank <= 0)
    throw Error(
        fmt::format("lora: rank for '{}' must be positive, got {}", base.hf_name, options.rank));
  if (!(options.dropout >= 0.0f && options.dropout < 1.0f))
    throw Error(fmt::format("lora: dropout for '{}' must be in [0, 1), got {}", base.hf_name,
                            options.dropout));
  in_ = base.in_features();
  out_ = base.out_features();
  layer_ = base.layer;
  kind_ = base.kind;
  hf_name_ = base.hf_name;
  scale_ = lora_scale(options.alpha, options.rank, options.rslora);
  a_ = Tensor::zeros({options.rank, in_});
  a_.set_name(peft_parameter_name(hf_name_, "lora_A.weight")).set_requires_grad(true);
  b_ = Tensor::zeros({out_, options.rank});
  b_.set_name(peft_parameter_name(hf_name_, "lora_B.weight")).set_requires_grad(true);
}

void LoraAdapter::check_call(const Linear& base, const Tensor& x) const {
  LOOM_CHECK(base.weight.dim() == 2 && base.out_features() == out_ && base.in_features() == in_,
             "lora: adapter made for '{}' [{} x {}] is applied to '{}' with weight {}", hf_name_,
             out_, in_, base.hf_name, shape_str(base.weight.shape()));
  LOOM_CHECK(x.dim() >= 1 && x.shape().back() == in_,
             "lora: '{}': input {} does not end in in_features {}", hf_name_, shape_str(x.shape()),
             in_);
}

bool LoraAdapter::dropout_active() const {
  return options_.dropout > 0.0f && runtime_ && runtime_->training.load();
}

Tensor LoraAdapter::dropped_input(const Tensor& x) const {
  if (!dropout_active()) return x;
  return loom::dropout(
      x, options_.dropout,
      lora_dropout_seed(options_.seed, runtime_->dropout_step.load(), layer_, kind_));
}

Tensor LoraAdapter::lora_product(const Tensor& x) const {
  return linear(linear(x, a_, Tensor(), Precision::F32), b_, Tensor(), Precision::F32);
}

Tensor LoraAdapter::apply(const Linear& base, const Tensor& x, const Tensor& base_out,
                          Precision) const {
  if (merged()) return base_out;
  check_call(base, x);
  // PEFT: result + lora_B(lora_A(dropout(x))) * scaling
  return add(base_out, loom::scale(lora_product(dropped_input(x)), static_cast<float>(scale_)));
}

Tensor LoraAdapter::forward(const Linear& base, const Tensor& x, Precision precision,
                            OutputUse use) const {
  if (merged()) return linear(x, base.weight, base.bias, precision, use);
  check_call(base, x);
  return linear_low_rank(x, base.weight, base.bias, dropped_input(x), a_, b_,
                         static_cast<float>(scale_), precision, use);
}

std::optional<LowRankTerm> LoraAdapter::low_rank_term(const Linear& base, const Tensor& x) const {
  if (is_dora())
    throw Error(
        fmt::format("lora: the DoRA adapter on '{}' is not a plain low-rank update", base.hf_name));
  if (merged()) return std::nullopt;
  check_call(base, x);
  return LowRankTerm{dropped_input(x), a_, b_, static_cast<float>(scale_)};
}

void LoraAdapter::init_kaiming_uniform(uint64_t seed) {
  // kaiming_uniform_(a = sqrt(5)) on [rank, in]: gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / in)
  // = 1 / sqrt(in).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_));
  const uint64_t key = lora_hash({seed, 0x6b61696d696e67ULL /* "kaiming" */,
                                  static_cast<uint64_t>(layer_), static_cast<uint64_t>(kind_)});
  std::vector<float> a(static_cast<size_t>(a_.numel()));
  for (size_t i = 0; i < a.size(); ++i)
    a[i] = static_cast<float>((2.0 * lora_uniform(key, i) - 1.0) * bound);
  set_lora_a(a);
  set_lora_b(std::vector<float>(static_cast<size_t>(b_.numel()), 0.0f));
}

void LoraAdapter::init_gaussian(uint64_t seed) {
  const double std_dev = 1.0 / static_cast<double>(options_.rank);
  const uint64_t key = lora_hash({seed, 0x6761757373ULL /* "gauss" */,
                                  static_cast<uint64_t>(layer_), static_cast<uint64_t>(kind_)});
  std::vector<float> a(static_cast<size_t>(a_.numel()));
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(lora_normal(key, i) * std_dev);
  set_lora_a(a);
  set_lora_b(std::vector<float>(static_cast<size_t>(b_.numel()), 0.0f));
}

namespace {

void set_values(const Tensor& t, const std::vector<float>& values, const std::string& module) {
  if (static_cast<int64_t>(values.size()) != t.numel())
    throw Error(fmt::format("lora: '{}': {} values given for {} {}, expected {}", module,
                            values.size(), t.name(), shape_str(t.shape()), t.numel()));
  std::copy(values.begin(), values.end(), t.data_f32());
}

}  // namespace

void LoraAdapter::set_lora_a(const std::vector<float>& values) {
  set_values(a_, values, hf_name_);
}
void LoraAdapter::set_lora_b(const std::vector<float>& values) {
  set_values(b_, values, hf_name_);
}

}  // namespace loom
