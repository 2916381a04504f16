// The adapted weight W + s B A of one projection, made a few rows at a time: what DoRA's row
// norms, merging and exports need, without ever holding a dequantized copy of W beside the
// result. W may be stored in any dtype (it is dequantized row block by row block).
#pragma once

#include <cstdint>
#include <functional>

#include "autograd/tensor.h"

namespace loom {

// Calls fn(first_row, n_rows, rows) for consecutive row blocks covering W [out, in], where rows
// is [n_rows x in] f32 holding W + scale * (B A) for those rows, computed as PEFT does:
// W + scale * (B @ A) in f32. A: f32 [rank, in]; B: f32 [out, rank]. With B undefined, rows
// hold W alone. Blocks run in parallel (OpenMP): fn must only touch its own rows' outputs.
using WeightRowsFn = std::function<void(int64_t first_row, int64_t n_rows, const float* rows)>;
void for_each_adapted_rows(const Tensor& weight, const Tensor& a, const Tensor& b, float scale,
                           const WeightRowsFn& fn);

}  // namespace loom
