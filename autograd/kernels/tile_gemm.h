// bf16 products on AMX tiles (Intel's Advanced Matrix Extensions): attention's block products
// (B in pairs) and the linear layers' products of 1024 rows or more (B in tiles, gemm_bf16.cpp).
// A call starts with one tile-configuration load (the smallest block product, [192 x
// 64] . [64 x 64], took 3.1 us against oneDNN 2.6's 4.3), so
// attention can make a block's scores 32 query rows at a time and use each strip at once while it
// is in cache; oneDNN's product of a whole block's scores ([192 x 64] . [64 x 512]) ran at ~330
// GFLOP/s on one Sapphire Rapids core, bound by writing the 393 KB of f32 scores out to L2. Only
// where the CPU has AMX-BF16 and the kernel grants the tile state; callers check
// amx_tiles_available() and keep another route for every other CPU.
#pragma once

#include <cstdint>

#include "autograd/quant/quant.h"  // bf16_t

namespace loom {

// AMX-TILE and AMX-BF16 in cpuid, the tile state enabled by the OS and granted to this process
// (arch_prctl), and not switched off by LOOM_NO_AMX=1 or set_amx_tiles_allowed(false).
bool amx_tiles_available();
// Tests compare the AMX route against the other one in one process.
void set_amx_tiles_allowed(bool allowed);

// B operands are given "in pairs" (AMX's VNNI layout): element (k, n) of B [K x N] at
// pairs[(k / 2) * 2 * ldp + 2 * n + k % 2], i.e. row k/2 of the pairs holds the two rows k, k+1
// of B interleaved, ldp pairs (columns) per pair-row.
//
// C [M x N] f32 (row stride ldc) = alpha * A . B (+ C when accumulate); A [M x K] bf16 row-major
// (row stride lda). M and N multiples of 16, K of 32. One thread: the calling one.
void amx_gemm_bf16_pairs(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A, int64_t lda,
                         const bf16_t* B_pairs, int64_t ldp, float* C, int64_t ldc,
                         bool accumulate);

// B operands "in tiles": B [K x N] (K a multiple of 32, N of 16) as the 1 KB tiles AMX loads,
// each 16 pair-rows x 16 pairs with no gaps: the tile of B's rows 32 kb .. + 31 and columns
// 16 nb .. + 15 at tiles + (nb * (K / 32) + kb) * 512, pair-row j of it at + 32 j, pair n of that
// at + 2 n. Each tile is read as one run of 16 cache lines (a B in pairs spread over rows ldp
// pairs apart is 16 lines 4 * ldp bytes apart) and a weight is put in tiles with whole-line
// stores. The columns of nb .. are the same layout for a B of those columns: a thread may make
// or use a share of 16-column blocks on its own. `tiles` 64-byte aligned.
//
// C [M x N] f32 (row stride ldc) = A . B (+ C when accumulate); A as for the pairs.
void amx_gemm_bf16_tiles(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                         const bf16_t* B_tiles, float* C, int64_t ldc, bool accumulate);
// Two products over one A combined row by row while in cache: Y [M x N] (row stride ldy) with
// Y[m, n0 : n1] = combine(C1[m, n0 : n1], C2[m, n0 : n1]) for C1 = A . B1 and C2 = A . B2, both
// B in tiles (e.g. a Llama MLP's silu(gate) * up, the two products never written out). C1 and
// C2 bits are those amx_gemm_bf16_tiles writes; combine sees each row in runs of whole 16s
// (panels of columns). `stage` is the calling thread's scratch: amx_combined_stage_floats(K)
// floats, 64-byte aligned.
using CombineRows = void (*)(const float* c1, const float* c2, float* y, int64_t n);
void amx_gemm_bf16_tiles_combined(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                                  const bf16_t* B1, const bf16_t* B2, CombineRows combine,
                                  float* stage, float* Y, int64_t ldy);
// Columns of B per panel of the combined product (two B panels share L2) and its stage's size.
inline int64_t combined_panel_columns(int64_t K) {
  const int64_t columns = (int64_t{1} << 18) / (2 * (K > 0 ? K : 1)) / 32 * 32;
  return columns > 32 ? columns : 32;
}
inline int64_t amx_combined_stage_floats(int64_t K) {
  return 2 * 32 * combined_panel_columns(K);
}

// B = S, S [rows x cols] row-major (row stride lds): rows a multiple of 32, cols of 16.
void to_tiles(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* tiles);
// B = S^T [cols x rows]: rows a multiple of 16, cols of 32.
void to_tiles_transposed(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* tiles);

// The pair layouts, from a row-major [rows x cols] bf16 matrix S (row stride lds):
// B = S: pairs row r/2 of S's rows r, r+1 (rows even); ldp >= cols.
void to_pairs(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* pairs, int64_t ldp);
// B = S^T [cols x rows]: pairs row c/2 holds S's columns c, c+1 (cols even); ldp >= rows.
void to_pairs_transposed(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* pairs,
                         int64_t ldp);

// out [cols x 32] (row stride ldo) = the transpose of in [32 x cols] (row stride ldi), bf16;
// cols a multiple of 32. Needs AVX-512 (every CPU with AMX has it): after amx_tiles_available().
void transpose_bf16_rows32(const bf16_t* in, int64_t ldi, int64_t cols, bf16_t* out, int64_t ldo);

namespace detail {
void to_pairs_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* pairs,
                     int64_t ldp);
void to_pairs_transposed_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds,
                                bf16_t* pairs, int64_t ldp);
void transpose_bf16_rows32_kernel(const bf16_t* in, int64_t ldi, int64_t cols, bf16_t* out,
                                  int64_t ldo);
void to_tiles_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* tiles);
void to_tiles_transposed_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds,
                                bf16_t* tiles);
void amx_gemm_bf16_tiles_combined_kernel(int64_t M, int64_t N, int64_t K, const bf16_t* A,
                                         int64_t lda, const bf16_t* B1, const bf16_t* B2,
                                         CombineRows combine, float* stage, float* Y, int64_t ldy);
void amx_gemm_bf16_tiles_kernel(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                                const bf16_t* B_tiles, float* C, int64_t ldc, bool accumulate);
// The kernel (tile_gemm_amx.cpp), after amx_tiles_available().
void amx_gemm_bf16_pairs_kernel(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A,
                                int64_t lda, const bf16_t* B_pairs, int64_t ldp, float* C,
                                int64_t ldc, bool accumulate);
}  // namespace detail

}  // namespace loom
