// Merging an adapter into a copy of its base weight, and undoing it:
//
//   LoRA:  W' = W + s B A
//   DoRA:  W' = (m / n) * (W + s B A)      row-wise, n = ||W + s B A||_row (PEFT's merge)
//
// W' is a NEW tensor in f32 or bf16 (the base may be quantized or memory-mapped; it is never
// written). While merged, the adapter's apply() returns the base output unchanged, so the model's
// forward is x W'^T + bias, equal to the adapter forward in eval mode (no dropout) up to the
// rounding of W' (bf16 keeps 8 bits). Unmerging puts the original weight tensor back -- exactly
// W, not W' - s B A recomputed as PEFT does.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "lora/adapter.h"

namespace loom {

enum class MergeDType : uint8_t { F32, BF16 };
std::string_view merge_dtype_name(MergeDType d);      // "f32", "bf16"
MergeDType parse_merge_dtype(std::string_view name);  // throws listing the valid names

// The merged weight of base + adapter as f32 values [out, in] row-major (for exports).
std::vector<float> merged_weight_values(const Linear& base, const LoraAdapter& adapter);
// The same as a tensor of `dtype` named like the base weight.
Tensor merged_weight(const Linear& base, const LoraAdapter& adapter, MergeDType dtype);

// Merges base.adapter (which must be a LoraAdapter) into base.weight; throws naming the module
// when it has no LoRA adapter or is already merged.
void merge_adapter(Linear& base, MergeDType dtype);
// Restores the original weight; throws naming the module when it is not merged.
void unmerge_adapter(Linear& base);

}  // namespace loom
