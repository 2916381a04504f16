// Quantize and dequantize for every block-quantized storage dtype (NF4, Q8_0, Q4_0, Q4_1, Q4_K,
// Q6_K), plus f32 <-> bf16 / f16 conversion. The interface is uniform over a flat run of
// `n_total` elements stored at `data`: a caller can dequantize any block-aligned range of it
// (e.g. a tile of rows of a weight matrix) without touching the rest.
//
// Every function has a plain scalar reference (namespace loom::ref) and a fast version picked at
// run time (AVX-512 where the CPU has it); tests hold the two together.
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/dtype.h"

namespace loom {

using bf16_t = uint16_t;  // raw bfloat16 bits
using f16_t = uint16_t;   // raw IEEE half bits

// Scalar conversions (round-to-nearest-even for the narrowing ones).
float bf16_to_f32(bf16_t x);
bf16_t f32_to_bf16(float x);
float f16_to_f32(f16_t x);
f16_t f32_to_f16(float x);

// Bulk conversions (fast path when available).
void convert_f32_to_bf16(const float* src, bf16_t* dst, int64_t n);
void convert_bf16_to_f32(const bf16_t* src, float* dst, int64_t n);
void convert_f32_to_f16(const float* src, f16_t* dst, int64_t n);
void convert_f16_to_f32(const f16_t* src, float* dst, int64_t n);

// Quantize n f32 values (n a multiple of the block size) into a new buffer of
// storage_bytes(t, n) bytes. For F32/BF16/F16 this is a plain conversion.
std::vector<uint8_t> quantize(DType t, const float* x, int64_t n);

// Dequantize elements [first, first + count) of a stored run of n_total elements of type t.
// first and count must be multiples of the block size. Works for every dtype, float ones too.
void dequantize(DType t, const void* data, int64_t n_total, int64_t first, int64_t count,
                float* out);
void dequantize_bf16(DType t, const void* data, int64_t n_total, int64_t first, int64_t count,
                     bf16_t* out);

// One activation row times weight rows straight from their stored blocks (decoding, M = 1):
// y[r] (+)= W[r, :] . x for rows [row_begin, row_end) of a [rows x cols] matrix stored as t.
// Available for NF4, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K on CPUs with AVX2 + FMA; gemv_rows_available
// says whether gemv_rows will run (it does nothing and returns false otherwise). Equals the product
// with the dequantized weights up to the order of the f32 additions.
bool gemv_rows_available(DType t);
bool gemv_rows(DType t, const void* data, int64_t rows, int64_t cols, int64_t row_begin,
               int64_t row_end, const float* x, float* y, bool accumulate);

namespace ref {
// Plain scalar references of the two above; the fast versions must match them exactly.
void dequantize(DType t, const void* data, int64_t n_total, int64_t first, int64_t count,
                float* out);
}  // namespace ref

}  // namespace loom
