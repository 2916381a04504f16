// Merge / unmerge of LoRA and DoRA adapters (lora/merge.h).
#include "lora/merge.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "autograd/check.h"
#include "lora/delta.h"
#include "lora/dora.h"

namespace loom {

std::string_view merge_dtype_name(MergeDType d) {
  return d == MergeDType::F32 ? "f32" : "bf16";
}

MergeDType parse_merge_dtype(std::string_view name) {
  if (name == "f32") return MergeDType::F32;
  if (name == "bf16") return MergeDType::BF16;
  throw Error(fmt::format("merge: unknown dtype '{}': expected f32 or bf16", name));
}

std::vector<float> merged_weight_values(const Linear& base, const LoraAdapter& adapter) {
  if (adapter.out_features() != base.out_features() || adapter.in_features() != base.in_features())
    throw Error(fmt::format("merge: adapter for '{}' [{} x {}] given projection '{}' {}",
                            adapter.hf_name(), adapter.out_features(), adapter.in_features(),
                            base.hf_name, shape_str(base.weight.shape())));
  // The weight the adapter applies to: the original one if a merge already replaced it.
  const Tensor& w = adapter.merged() ? adapter.unmerged_weight() : base.weight;
  const int64_t in = base.in_features();
  const auto* dora = dynamic_cast<const DoraAdapter*>(&adapter);
  const std::vector<float> magnitude = dora ? dora->magnitude().to_vector() : std::vector<float>();
  std::vector<float> out(static_cast<size_t>(base.out_features() * in));
  for_each_adapted_rows(w, adapter.lora_a(), adapter.lora_b(), static_cast<float>(adapter.scale()),
                        [&](int64_t r0, int64_t nr, const float* rows) {
                          for (int64_t r = 0; r < nr; ++r) {
                            const float* src = rows + r * in;
                            float* dst = out.data() + (r0 + r) * in;
                            if (!dora) {
                              std::copy(src, src + in, dst);
                              continue;
                            }
                            // PEFT: dora_factor = magnitude / weight_norm; new_weight = dora_factor
                            // * (W + s B A)
                            double sq = 0.0;
                            for (int64_t j = 0; j < in; ++j)
                              sq += static_cast<double>(src[j]) * src[j];
                            const float factor = magnitude[static_cast<size_t>(r0 + r)] /
                                                 static_cast<float>(std::sqrt(sq));
                            for (int64_t j = 0; j < in; ++j) dst[j] = factor * src[j];
                          }
                        });
  return out;
}

Tensor merged_weight(const Linear& base, const LoraAdapter& adapter, MergeDType dtype) {
  const Shape shape = {base.out_features(), base.in_features()};
  const std::vector<float> values = merged_weight_values(base, adapter);
  Tensor t = dtype == MergeDType::F32 ? Tensor::from_vector(shape, values)
                                      : Tensor::quantized_from(shape, DType::BF16, values);
  t.set_name(base.weight.name());
  return t;
}

namespace {

LoraAdapter& lora_adapter_of(const Linear& base, std::string_view what) {
  auto* adapter = dynamic_cast<LoraAdapter*>(base.adapter.get());
  if (adapter == nullptr)
    throw Error(
        fmt::format("{}: projection '{}' has no LoRA adapter attached", what, base.hf_name));
  return *adapter;
}

}  // namespace

void merge_adapter(Linear& base, MergeDType dtype) {
  LoraAdapter& adapter = lora_adapter_of(base, "merge");
  if (adapter.merged())
    throw Error(fmt::format("merge: the adapter of '{}' is already merged", base.hf_name));
  Tensor merged = merged_weight(base, adapter, dtype);
  adapter.set_merged(base.weight);
  base.weight = std::move(merged);
}

void unmerge_adapter(Linear& base) {
  LoraAdapter& adapter = lora_adapter_of(base, "unmerge");
  if (!adapter.merged())
    throw Error(fmt::format("unmerge: the adapter of '{}' is not merged", base.hf_name));
  base.weight = adapter.unmerged_weight();
  adapter.set_merged(Tensor());
}

}  // namespace loom
