// The AMX kernel behind amx_gemm_bf16_pairs (tile_gemm.h). Compiled with AMX and AVX-512 code
// generation; called only after amx_tiles_available().
#include <immintrin.h>

#include "autograd/kernels/tile_gemm.h"

namespace loom::detail {
namespace {

// Tile registers: 0-3 a 32 x 32 block of C (2 x 2 tiles of 16 x 16 f32), 4-5 two 16-row strips
// of A (16 rows x 32 bf16), 6-7 two 16-column strips of B in pairs (16 pair-rows x 16 pairs).
// Every tile is 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

const TileConfig& tile_config() {
  static const TileConfig config = [] {
    TileConfig c;
    for (int i = 0; i < 8; ++i) {
      c.colsb[i] = 64;
      c.rows[i] = 16;
    }
    return c;
  }();
  return config;
}

// C's 16 x 16 block = alpha * tile (+ C).
inline void finish(const float* tile, float alpha, float* C, int64_t ldc, bool accumulate) {
  const __m512 a = _mm512_set1_ps(alpha);
  for (int r = 0; r < 16; ++r) {
    __m512 v = _mm512_mul_ps(_mm512_load_ps(tile + 16 * r), a);
    float* c = C + r * ldc;
    if (accumulate) v = _mm512_add_ps(v, _mm512_loadu_ps(c));
    _mm512_storeu_ps(c, v);
  }
}

// One block of C: MT x NT tiles (each 1 or 2) at A's rows / B's columns given.
template <int MT, int NT>
void block(int64_t K, float alpha, const bf16_t* A, int64_t lda, const bf16_t* B, int64_t ldp,
           float* C, int64_t ldc, bool accumulate) {
  _tile_zero(0);
  if constexpr (NT == 2) _tile_zero(1);
  if constexpr (MT == 2) _tile_zero(2);
  if constexpr (MT == 2 && NT == 2) _tile_zero(3);
  const int64_t a_bytes = lda * 2, b_bytes = ldp * 4;
  for (int64_t k = 0; k < K; k += 32) {
    const bf16_t* b = B + k * ldp;  // pair-row k / 2
    _tile_loadd(6, b, b_bytes);
    if constexpr (NT == 2) _tile_loadd(7, b + 32, b_bytes);
    _tile_loadd(4, A + k, a_bytes);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MT == 2) {
      _tile_loadd(5, A + 16 * lda + k, a_bytes);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (NT == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  if (alpha == 1.0f && !accumulate) {
    const int64_t c_bytes = ldc * 4;
    _tile_stored(0, C, c_bytes);
    if constexpr (NT == 2) _tile_stored(1, C + 16, c_bytes);
    if constexpr (MT == 2) _tile_stored(2, C + 16 * ldc, c_bytes);
    if constexpr (MT == 2 && NT == 2) _tile_stored(3, C + 16 * ldc + 16, c_bytes);
    return;
  }
  alignas(64) float out[4][256];
  _tile_stored(0, out[0], 64);
  if constexpr (NT == 2) _tile_stored(1, out[1], 64);
  if constexpr (MT == 2) _tile_stored(2, out[2], 64);
  if constexpr (MT == 2 && NT == 2) _tile_stored(3, out[3], 64);
  finish(out[0], alpha, C, ldc, accumulate);
  if constexpr (NT == 2) finish(out[1], alpha, C + 16, ldc, accumulate);
  if constexpr (MT == 2) finish(out[2], alpha, C + 16 * ldc, ldc, accumulate);
  if constexpr (MT == 2 && NT == 2) finish(out[3], alpha, C + 16 * ldc + 16, ldc, accumulate);
}

}  // namespace

void amx_gemm_bf16_pairs_kernel(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A,
                                int64_t lda, const bf16_t* B_pairs, int64_t ldp, float* C,
                                int64_t ldc, bool accumulate) {
  // The configuration is per thread and oneDNN's kernels load their own: load ours every call,
  // and release the tiles after (a thread holding tile state makes every context switch save
  // 8 KB of it).
  _tile_loadconfig(&tile_config());
  for (int64_t m = 0; m < M; m += 32) {
    const bool m2 = m + 32 <= M;
    const bf16_t* a = A + m * lda;
    for (int64_t n = 0; n < N; n += 32) {
      const bool n2 = n + 32 <= N;
      const bf16_t* b = B_pairs + 2 * n;
      float* c = C + m * ldc + n;
      if (m2 && n2)
        block<2, 2>(K, alpha, a, lda, b, ldp, c, ldc, accumulate);
      else if (m2)
        block<2, 1>(K, alpha, a, lda, b, ldp, c, ldc, accumulate);
      else if (n2)
        block<1, 2>(K, alpha, a, lda, b, ldp, c, ldc, accumulate);
      else
        block<1, 1>(K, alpha, a, lda, b, ldp, c, ldc, accumulate);
    }
  }
  _tile_release();
}

}  // namespace loom::detail
