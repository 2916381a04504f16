// Vectorized row kernels for the elementwise parts of the ops (softmax pieces, activations,
// RMSNorm), as a table of plain functions over contiguous f32 runs.
//
// The same source (vec_kernels_impl.h) is compiled three times: vec_kernels.cpp for any x86-64
// CPU (the portable reference), vec_kernels_avx2.cpp with AVX2 + FMA and vec_kernels_avx512.cpp
// with AVX-512; vec_kernels() picks the widest the CPU runs. All use one exp approximation, so
// they agree to rounding (reduction order and FMA contraction); tests hold them together.
#pragma once

#include <cstdint>

namespace loom::ops_detail {

struct VecKernels {
  // softmax / logsumexp
  float (*max)(const float* x, int64_t n);
  float (*exp_sum)(const float* x, float* y, int64_t n, float shift);  // y = e^(x-shift); sum y
  float (*sum_exp)(const float* x, int64_t n, float shift);            // sum e^(x-shift)
  void (*exp_scale)(const float* x, float* y, int64_t n, float shift, float scale);  // y = e^(x-shift)*scale
  void (*scale)(float* x, int64_t n, float s);                         // x *= s
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*mask_docs)(float* s, const int32_t* docs, int32_t doc, int64_t n);  // s = docs==doc ? s : -inf
  void (*softmax_grad)(const float* p, float* dp, int64_t n, float delta);    // dp = p * (dp - delta)
  void (*log_softmax_grad)(const float* y, const float* g, float* dx, int64_t n, float gsum);  // dx = g - e^y*gsum
  // The same with bf16 outputs (raw bits, rounded to nearest even as f32_to_bf16), for products
  // that read bf16: y = bf16(e^(x-shift)), returning the sum of the unrounded terms; and
  // p = e^(s-lse), p_out = bf16(p), ds_out = bf16(p * (dp - delta)).
  float (*exp_sum_bf16)(const float* x, uint16_t* y, int64_t n, float shift);
  void (*softmax_grad_bf16)(const float* s, const float* dp, int64_t n, float lse, float delta,
                            uint16_t* p_out, uint16_t* ds_out);
  // activations (n elements)
  void (*silu_fwd)(const float* x, float* y, int64_t n);
  void (*silu_bwd)(const float* x, const float* g, float* dx, int64_t n);
  void (*swiglu_fwd)(const float* gate, const float* up, float* y, int64_t n);
  void (*swiglu_bwd)(const float* gate, const float* up, const float* g, float* dgate, float* dup, int64_t n);
  // RMSNorm rows
  float (*sum_squares)(const float* x, int64_t n);
  float (*dot3)(const float* a, const float* b, const float* c, int64_t n);  // sum a*b*c
  void (*rmsnorm_fwd)(const float* x, const float* w, float r, float* y, int64_t n);  // y = x*r*w
  void (*rmsnorm_bwd)(const float* g, const float* w, const float* x, float r, float c, float* dx,
                      int64_t n);  // dx = r * (g*w - x*c)
  void (*rmsnorm_dw)(const float* g, const float* x, float r, float* acc, int64_t n);  // acc += g*x*r
  // dropout: y[i] = keep(first + i) ? x[i] * scale : 0, keep(j) = (hash(j * golden + key) >> 8)
  // >= threshold, i.e. a 24-bit uniform against p * 2^24 (dropout_hash_key makes the key).
  void (*dropout)(const float* x, float* y, int64_t n, uint32_t first, uint32_t key,
                  uint32_t threshold, float scale);
  const char* name;
};

uint32_t dropout_hash_key(uint64_t seed);
uint32_t dropout_threshold(float p);  // p * 2^24, rounded
bool dropout_keep(uint32_t index, uint32_t key, uint32_t threshold);  // the scalar rule

const VecKernels& vec_kernels();           // AVX-512 build, else AVX2, else portable
const VecKernels& vec_kernels_portable();  // the portable build (reference for tests)
const VecKernels* vec_kernels_avx512();    // null when not usable here
const VecKernels* vec_kernels_avx2();      // null when not usable here (no AVX2 + FMA + F16C)

// The exp approximation every build uses, for tests: e^x with ~2 ulp relative error, 0 below
// -87, +inf above 88, NaN for NaN.
float vec_exp_reference(float x);

}  // namespace loom::ops_detail
