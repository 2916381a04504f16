// Internal per-format entry points behind quant.h: the quantizers, the scalar dequantizers (the
// loom::ref path), and the AVX-512 and AVX2 dequantizers. quant.cpp dispatches to them by dtype;
// nothing outside autograd/quant/ and its tests should include this header.
//
// GGUF formats take a pointer to the first block to decode and a block count. NF4 is not a run of
// self-contained blocks (its absmax values live after the codes), so it takes the whole stored
// run and an element range.
#pragma once

#include <cstdint>

#include "autograd/quant/quant.h"

namespace loom::quant {

// ---- quantizers (x holds nblocks * block size floats, all finite) ----
void quantize_q8_0(const float* x, int64_t nblocks, uint8_t* out);
void quantize_q4_0(const float* x, int64_t nblocks, uint8_t* out);
void quantize_q4_1(const float* x, int64_t nblocks, uint8_t* out);
void quantize_q4_k(const float* x, int64_t nblocks, uint8_t* out);
void quantize_q6_k(const float* x, int64_t nblocks, uint8_t* out);
void quantize_nf4(const float* x, int64_t n, uint8_t* out);  // out: nf4_storage_bytes(n)

// ---- scalar reference dequantizers ----
void dequant_q8_0_ref(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_0_ref(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_1_ref(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_k_ref(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q6_k_ref(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_nf4_ref(const uint8_t* data, int64_t n_total, int64_t first, int64_t count,
                     float* out);

// Where the NF4 sections of a run of n elements start (see nf4.h), and the per-block absmax rule
// both NF4 paths share so they cannot drift apart.
struct Nf4Layout {
  const uint8_t* codes;
  const int8_t* absmax_q;
  const uint8_t* dq_scale;  // f32 values, not necessarily 4-aligned: read with memcpy
  float absmax_mean;
};
Nf4Layout nf4_layout(const uint8_t* data, int64_t n_total);
float nf4_block_absmax(const Nf4Layout& layout, int64_t block);

// ---- AVX-512 paths (dequant_avx512.cpp, convert_avx512.cpp). Call only when
// cpu_has_avx512_bf16() is true; they give exactly the scalar results (bf16 = RNE of the f32). --
namespace avx512 {
void dequant_q8_0(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q8_0(const uint8_t* blocks, int64_t nblocks, bf16_t* out);
void dequant_q4_0(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_0(const uint8_t* blocks, int64_t nblocks, bf16_t* out);
void dequant_q4_1(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_1(const uint8_t* blocks, int64_t nblocks, bf16_t* out);
void dequant_q4_k(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_k(const uint8_t* blocks, int64_t nblocks, bf16_t* out);
void dequant_q6_k(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q6_k(const uint8_t* blocks, int64_t nblocks, bf16_t* out);
void dequant_nf4(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, float* out);
void dequant_nf4(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, bf16_t* out);

void convert_f32_to_bf16(const float* src, bf16_t* dst, int64_t n);
void convert_bf16_to_f32(const bf16_t* src, float* dst, int64_t n);
void convert_f32_to_f16(const float* src, f16_t* dst, int64_t n);
void convert_f16_to_f32(const f16_t* src, float* dst, int64_t n);
void convert_f16_to_bf16(const f16_t* src, bf16_t* dst, int64_t n);
}  // namespace avx512

// ---- AVX2 paths (dequant_avx2.cpp), f32 output only. Call only when use_avx2() is true; they
// give exactly the scalar results. ------------------------------------------------------------
namespace avx2 {
void dequant_q8_0(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_0(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_1(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q4_k(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_q6_k(const uint8_t* blocks, int64_t nblocks, float* out);
void dequant_nf4(const uint8_t* data, int64_t n_total, int64_t first, int64_t count, float* out);
// gemv_avx2.cpp: y[r] (+)= W[r, :] . x for rows [row_begin, row_end) of [rows x cols] NF4 /
// Q8_0 / Q4_0 / Q4_1 / Q4_K / Q6_K weights; false (nothing done) for other dtypes.
bool gemv_rows(DType t, const uint8_t* data, int64_t rows, int64_t cols, int64_t row_begin,
               int64_t row_end, const float* x, float* y, bool accumulate);
}  // namespace avx2

// True when the AVX-512 paths may run on this CPU (cpu_has_avx512_bf16(), cached).
bool use_avx512();
// True when the AVX2 paths may run on this CPU (AVX2 + FMA + F16C, cached). dequantize() takes
// them where use_avx512() is false.
bool use_avx2();
// The dequantization dequantize() runs here: "AVX-512", "AVX2" or "scalar".
const char* dequant_path();

}  // namespace loom::quant
