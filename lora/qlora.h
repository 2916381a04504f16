// The frozen base's storage for LoRA training (QLoRA when NF4): every projection weight is
// converted one matrix at a time -- dequantized to f32, re-stored in the target dtype, the old
// tensor released -- so at most one projection is ever held in f32 beside the model.
//
//   keep  the dtype it was loaded in (a GGUF Q4_1 stays Q4_1 and is read in place)
//   nf4   NF4 with double-quantized absmax (autograd/quant/nf4.h): QLoRA
//   bf16  bfloat16 (round to nearest even)
//   f32
//
// Only the seven projections of each block are converted: embeddings, norms and the output
// projection keep their storage (QLoRA quantizes the linear layers it adapts around, not the
// lm head). The forward and the input gradient then run through the kernels of that dtype
// (autograd/kernels/gemm.h), which dequantize tiles on the fly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "layers/llama.h"

namespace loom {

enum class BaseDType : uint8_t { Keep, NF4, BF16, F32 };

std::string_view base_dtype_name(BaseDType d);  // "keep", "nf4", "bf16", "f32"
// Parses those names; throws listing them.
BaseDType parse_base_dtype(std::string_view name);
// The storage dtype of a weight now stored as `current` (current itself for keep).
DType base_storage_dtype(BaseDType target, DType current);

// A weight stored as `target`: the same tensor when already so, else a new contiguous one with
// the same name. Throws naming the tensor when its rows cannot be stored that way (NF4 needs
// in_features to be a multiple of its 64-element block).
Tensor convert_weight(const Tensor& weight, DType target);

struct BaseConversion {
  int64_t converted = 0;     // projections whose storage changed
  int64_t bytes_before = 0;  // storage of all projection weights before / after
  int64_t bytes_after = 0;
};
// Converts every projection of the model to `target`, one matrix at a time.
BaseConversion convert_base(LlamaModel& model, BaseDType target);

}  // namespace loom
