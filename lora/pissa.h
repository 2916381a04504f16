// PiSSA init (arXiv 2404.02948), as PEFT's init_lora_weights="pissa": from the SVD
// W = U S V^T of the base weight (f32 values, any storage dequantized) and the adapter's scale s,
//
//   A = diag(sqrt(S_r / s)) V_r^T      [r, in]
//   B = U_r diag(sqrt(S_r / s))        [out, r]        so that s B A = U_r S_r V_r^T
//   W_res = W - s B A                  the base weight is REPLACED by this residual
//
// so the adapted model starts exactly at W (up to f32 rounding) while the adapter holds the
// principal components. The top-r triplets are exact (not PEFT's randomized "pissa_niter"
// variant): an eigen-decomposition of the smaller Gram matrix W^T W or W W^T in double (Eigen),
// then the other side's vectors as W v / sigma -- min(out, in)^3 work, well conditioned for the
// leading singular values PiSSA keeps.
//
// The residual is a new matrix, so the projection needs a writable weight: pissa_init stores it
// as a NEW tensor in `residual_dtype` (the original, possibly memory-mapped, is never written).
// With a quantized base that is where the exactness ends: for QLoRA (NF4) the residual is
// quantized to NF4 -- PiSSA's "QPiSSA", whose quantization error is smaller than that of W
// itself because the large singular values are in the f32 adapter -- and with base_dtype keep a
// GGUF-quantized W's residual is re-quantized to the same GGUF type. Then residual + s B A equals
// W only up to that quantization error. PiSSA must therefore run on the loaded weight before the
// base is converted (LoraModel does so).
#pragma once

#include <cstdint>
#include <vector>

#include "lora/adapter.h"

namespace loom {

struct PissaFactors {
  std::vector<float> a;                 // [rank, in], row-major
  std::vector<float> b;                 // [out, rank]
  std::vector<float> residual;          // [out, in]: W - s B A (f32 A, B as stored)
  std::vector<double> singular_values;  // the top `rank`, descending
};

// The factors of W [out, in] (row-major f32 values) for `rank` and scale s. rank must be at most
// min(out, in).
PissaFactors pissa_factors(const std::vector<float>& weight, int64_t out, int64_t in, int64_t rank,
                           double scale);

// Sets adapter's A and B from base's weight (dequantized) and replaces base.weight by the
// residual stored as residual_dtype. Throws naming the module on a rank larger than min(out, in)
// or a residual that cannot be stored as that dtype.
void pissa_init(Linear& base, LoraAdapter& adapter, DType residual_dtype);

}  // namespace loom
