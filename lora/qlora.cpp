// Base weight storage conversion for LoRA / QLoRA (lora/qlora.h).
#include "lora/qlora.h"

#include <fmt/format.h>

#include "autograd/check.h"

namespace loom {

namespace {

constexpr std::pair<BaseDType, std::string_view> kNames[] = {{BaseDType::Keep, "keep"},
                                                             {BaseDType::NF4, "nf4"},
                                                             {BaseDType::BF16, "bf16"},
                                                             {BaseDType::F32, "f32"}};

}  // namespace

std::string_view base_dtype_name(BaseDType d) {
  for (const auto& [value, name] : kNames)
    if (value == d) return name;
  LOOM_FAIL("qlora: unknown BaseDType {}", static_cast<int>(d));
}

BaseDType parse_base_dtype(std::string_view name) {
  for (const auto& [value, n] : kNames)
    if (n == name) return value;
  throw Error(fmt::format("qlora: unknown base_dtype '{}': expected keep, nf4, bf16 or f32", name));
}

DType base_storage_dtype(BaseDType target, DType current) {
  switch (target) {
    case BaseDType::Keep:
      return current;
    case BaseDType::NF4:
      return DType::NF4;
    case BaseDType::BF16:
      return DType::BF16;
    case BaseDType::F32:
      return DType::F32;
  }
  LOOM_FAIL("qlora: unknown BaseDType {}", static_cast<int>(target));
}

Tensor convert_weight(const Tensor& weight, DType target) {
  LOOM_CHECK(weight.defined() && weight.dim() == 2, "qlora: weight '{}' must be 2-D",
             weight.defined() ? weight.name() : std::string("<undefined>"));
  if (weight.dtype() == target) return weight;
  const int64_t block = dtype_info(target).block_elems;
  if (weight.size(1) % block != 0)
    throw Error(fmt::format(
        "qlora: cannot store weight '{}' {} as {}: its rows of {} elements are not a multiple of "
        "the {}-element {} block; use base_dtype bf16 or f32",
        weight.name(), shape_str(weight.shape()), dtype_name(target), weight.size(1), block,
        dtype_name(target)));
  Tensor out = target == DType::F32
                   ? Tensor::from_vector(weight.shape(), weight.to_vector())
                   : Tensor::quantized_from(weight.shape(), target, weight.to_vector());
  out.set_name(weight.name());
  return out;
}

BaseConversion convert_base(LlamaModel& model, BaseDType target) {
  BaseConversion stats;
  for (Linear* p : model.projections()) {
    const DType from = p->weight.dtype();
    stats.bytes_before += storage_bytes(from, p->weight.numel());
    p->weight = convert_weight(p->weight, base_storage_dtype(target, from));  // old one released
    stats.bytes_after += storage_bytes(p->weight.dtype(), p->weight.numel());
    if (p->weight.dtype() != from) ++stats.converted;
  }
  return stats;
}

}  // namespace loom
