// The AMX kernel behind amx_gemm_bf16_pairs (tile_gemm.h). Compiled with AMX and AVX-512 code
// generation; called only after amx_tiles_available().
#include <immintrin.h>

#include <algorithm>
#include <cstring>

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

// Where B's tiles lie: the tile for the next 32 rows of B is k_step elements on, a tile's 16
// pair-rows are stride_bytes apart, and the tile of the next 16 columns is `next` elements on.
struct BLayout {
  int64_t k_step, stride_bytes, next;
};

// B in pairs with ldp pairs per pair-row.
BLayout pairs_layout(int64_t ldp) {
  return {32 * ldp, 4 * ldp, 32};
}

// B in tiles (tile_gemm.h) of a K-row B: 1 KB tiles, K / 32 of them per 16 columns.
BLayout tiles_layout(int64_t K) {
  return {512, 64, K / 32 * 512};
}

// Columns of B per panel: ~512 KB of it (gemm() below says why).
int64_t panel_columns(int64_t K) {
  constexpr int64_t kPanelBytes = int64_t{1} << 19;
  return std::max<int64_t>(32, kPanelBytes / (2 * K) / 32 * 32);
}

// One block of C: MT x NT tiles (each 1 or 2) at A's rows / B's first tile given.
template <int MT, int NT>
void block(int64_t K, float alpha, const bf16_t* A, int64_t lda, const bf16_t* B, BLayout bl,
           float* C, int64_t ldc, bool accumulate) {
  // Adding to C with alpha 1 starts the tiles from C itself; otherwise from zero, C's blocks
  // then finished through a staging buffer below.
  const bool from_c = accumulate && alpha == 1.0f;
  const int64_t c_bytes = ldc * 4;
  if (from_c) {
    _tile_loadd(0, C, c_bytes);
    if constexpr (NT == 2) _tile_loadd(1, C + 16, c_bytes);
    if constexpr (MT == 2) _tile_loadd(2, C + 16 * ldc, c_bytes);
    if constexpr (MT == 2 && NT == 2) _tile_loadd(3, C + 16 * ldc + 16, c_bytes);
  } else {
    _tile_zero(0);
    if constexpr (NT == 2) _tile_zero(1);
    if constexpr (MT == 2) _tile_zero(2);
    if constexpr (MT == 2 && NT == 2) _tile_zero(3);
  }
  const int64_t a_bytes = lda * 2, b_bytes = bl.stride_bytes;
  const bf16_t* b = B;
  for (int64_t k = 0; k < K; k += 32, b += bl.k_step) {
    _tile_loadd(6, b, b_bytes);
    if constexpr (NT == 2) _tile_loadd(7, b + bl.next, b_bytes);
    _tile_loadd(4, A + k, a_bytes);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MT == 2) {
      _tile_loadd(5, A + 16 * lda + k, a_bytes);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (NT == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  if (alpha == 1.0f) {
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

// block<> for a block of 32 rows (m2) or 16, 32 columns (n2) or 16.
void any_block(bool m2, bool n2, int64_t K, float alpha, const bf16_t* A, int64_t lda,
               const bf16_t* B, BLayout bl, float* C, int64_t ldc, bool accumulate) {
  if (m2 && n2)
    block<2, 2>(K, alpha, A, lda, B, bl, C, ldc, accumulate);
  else if (m2)
    block<2, 1>(K, alpha, A, lda, B, bl, C, ldc, accumulate);
  else if (n2)
    block<1, 2>(K, alpha, A, lda, B, bl, C, ldc, accumulate);
  else
    block<1, 1>(K, alpha, A, lda, B, bl, C, ldc, accumulate);
}

// Shuffles through their zero-masked forms with every lane kept: GCC 12's unmasked ones pass an
// undefined vector that -Wmaybe-uninitialized reports.
constexpr __mmask8 kAll8 = 0xFF;
constexpr __mmask16 kAll16 = 0xFFFF;
constexpr __mmask32 kAll32 = 0xFFFFFFFF;

// The 16 x 16 32-bit matrix in r[0..15] (rows) transposed in place: r[j] = old column j.
inline void transpose_16x16_epi32(__m512i* r) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: pairs of rows interleaved
    a[i] = _mm512_maskz_unpacklo_epi32(kAll16, r[i], r[i + 1]);
    a[i + 1] = _mm512_maskz_unpackhi_epi32(kAll16, r[i], r[i + 1]);
  }
  // b[4q + c], lane L: column 4L + c of rows 4q .. 4q + 3.
  for (int q = 0; q < 4; ++q) {
    b[4 * q + 0] = _mm512_maskz_unpacklo_epi64(kAll8, a[4 * q], a[4 * q + 2]);
    b[4 * q + 1] = _mm512_maskz_unpackhi_epi64(kAll8, a[4 * q], a[4 * q + 2]);
    b[4 * q + 2] = _mm512_maskz_unpacklo_epi64(kAll8, a[4 * q + 1], a[4 * q + 3]);
    b[4 * q + 3] = _mm512_maskz_unpackhi_epi64(kAll8, a[4 * q + 1], a[4 * q + 3]);
  }
  // Column 4L + c gathers lane L of b[c], b[4 + c], b[8 + c], b[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i c0 =
        _mm512_maskz_shuffle_i32x4(kAll16, b[c], b[4 + c], 0x88);  // lanes 0, 2 of each
    const __m512i c1 = _mm512_maskz_shuffle_i32x4(kAll16, b[c], b[4 + c], 0xDD);  // lanes 1, 3
    const __m512i c2 = _mm512_maskz_shuffle_i32x4(kAll16, b[8 + c], b[12 + c], 0x88);
    const __m512i c3 = _mm512_maskz_shuffle_i32x4(kAll16, b[8 + c], b[12 + c], 0xDD);
    r[c] = _mm512_maskz_shuffle_i32x4(kAll16, c0, c2, 0x88);
    r[8 + c] = _mm512_maskz_shuffle_i32x4(kAll16, c0, c2, 0xDD);
    r[4 + c] = _mm512_maskz_shuffle_i32x4(kAll16, c1, c3, 0x88);
    r[12 + c] = _mm512_maskz_shuffle_i32x4(kAll16, c1, c3, 0xDD);
  }
}

}  // namespace

void transpose_bf16_rows32_kernel(const bf16_t* in, int64_t ldi, int64_t cols, bf16_t* out,
                                  int64_t ldo) {
  for (int64_t j0 = 0; j0 < cols; j0 += 32) {
    // Rows 2i and 2i + 1 interleaved: 32-bit element 4L + c of lo[i] holds both rows' column
    // j0 + 8L + c, of hi[i] column j0 + 8L + 4 + c (unpack works within 128-bit lanes). A
    // transposed 32-bit column then holds one bf16 column, all 32 rows in order.
    __m512i lo[16], hi[16];
    for (int i = 0; i < 16; ++i) {
      const __m512i a = _mm512_loadu_si512(in + (2 * i) * ldi + j0);
      const __m512i b = _mm512_loadu_si512(in + (2 * i + 1) * ldi + j0);
      lo[i] = _mm512_maskz_unpacklo_epi16(kAll32, a, b);
      hi[i] = _mm512_maskz_unpackhi_epi16(kAll32, a, b);
    }
    transpose_16x16_epi32(lo);
    transpose_16x16_epi32(hi);
    for (int p = 0; p < 16; ++p) {
      const int64_t j = j0 + (p / 4) * 8 + p % 4;
      _mm512_storeu_si512(out + j * ldo, lo[p]);
      _mm512_storeu_si512(out + (j + 4) * ldo, hi[p]);
    }
  }
}

void to_pairs_transposed_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds,
                                bf16_t* pairs, int64_t ldp) {
  // Pair (c/2, r) is the 32-bit element c/2 of S's row r: 16 x 16 blocks of 32-bit elements
  // transposed in registers; ragged edges element by element.
  const int64_t words = cols / 2, full_rows = rows / 16 * 16, full_words = words / 16 * 16;
  auto word = [&](int64_t r, int64_t j) -> void {
    std::memcpy(pairs + j * 2 * ldp + 2 * r, S + r * lds + 2 * j, 4);
  };
  for (int64_t r0 = 0; r0 < full_rows; r0 += 16) {
    for (int64_t j0 = 0; j0 < full_words; j0 += 16) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_si512(S + (r0 + i) * lds + 2 * j0);
      transpose_16x16_epi32(v);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(pairs + (j0 + i) * 2 * ldp + 2 * r0, v[i]);
    }
    for (int64_t j = full_words; j < words; ++j)
      for (int64_t r = r0; r < r0 + 16; ++r) word(r, j);
  }
  for (int64_t r = full_rows; r < rows; ++r)
    for (int64_t j = 0; j < words; ++j) word(r, j);
}

void to_pairs_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* pairs,
                     int64_t ldp) {
  // unpack interleaves within 128-bit lanes: lo holds columns {0-3, 8-11, 16-19, 24-27} of the
  // 32, hi {4-7, ...}; two permutes put the 32 pairs back in column order.
  const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  for (int64_t r = 0; r < rows; r += 2) {
    const bf16_t* s0 = S + r * lds;
    const bf16_t* s1 = s0 + lds;
    bf16_t* d = pairs + r * ldp;  // pair-row r / 2
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
      const __m512i a = _mm512_loadu_si512(s0 + c), b = _mm512_loadu_si512(s1 + c);
      const __m512i lo = _mm512_maskz_unpacklo_epi16(kAll32, a, b);
      const __m512i hi = _mm512_maskz_unpackhi_epi16(kAll32, a, b);
      _mm512_storeu_si512(d + 2 * c, _mm512_permutex2var_epi64(lo, first, hi));
      _mm512_storeu_si512(d + 2 * c + 32, _mm512_permutex2var_epi64(lo, second, hi));
    }
    for (; c < cols; ++c) {
      d[2 * c] = s0[c];
      d[2 * c + 1] = s1[c];
    }
  }
}

namespace {

// The kernel over a B whose 16-column tiles start at B + (n / 16) * first_of_16 (n a multiple
// of 16) and lie as `bl` says.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A, int64_t lda,
          const bf16_t* B, int64_t first_of_16, BLayout bl, float* C, int64_t ldc,
          bool accumulate) {
  // The configuration is per thread and oneDNN's kernels load their own: load ours every call,
  // and release the tiles after (a thread holding tile state makes every context switch save
  // 8 KB of it).
  _tile_loadconfig(&tile_config());
  // B a panel of columns at a time, kept in L2 while every 32-row strip of A passes over it:
  // ~512 KB of B per panel. (A whole projection's B, 608 x 1536 as bf16, does not stay in a
  // 2 MB L2 next to A's and C's traffic: alone on two Sapphire Rapids cores, its product over
  // 2048 rows ran at ~1,650 GFLOP/s against ~2,100-2,300 in panels of 256-512 columns, C kept in
  // cache; into fresh C memory, as in a training step, ~1,250-1,500.)
  const int64_t panel = panel_columns(K);
  for (int64_t p0 = 0; p0 < N; p0 += panel) {
    const int64_t p1 = std::min(N, p0 + panel);
    for (int64_t m = 0; m < M; m += 32) {
      const bool m2 = m + 32 <= M;
      const bf16_t* a = A + m * lda;
      for (int64_t n = p0; n < p1; n += 32) {
        const bool n2 = n + 32 <= p1;
        const bf16_t* b = B + n / 16 * first_of_16;
        float* c = C + m * ldc + n;
        any_block(m2, n2, K, alpha, a, lda, b, bl, c, ldc, accumulate);
      }
    }
  }
  _tile_release();
}

}  // namespace

void amx_gemm_bf16_pairs_kernel(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A,
                                int64_t lda, const bf16_t* B_pairs, int64_t ldp, float* C,
                                int64_t ldc, bool accumulate) {
  gemm(M, N, K, alpha, A, lda, B_pairs, 32, pairs_layout(ldp), C, ldc, accumulate);
}

void amx_gemm_bf16_tiles_kernel(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                                const bf16_t* B_tiles, float* C, int64_t ldc, bool accumulate) {
  const BLayout bl = tiles_layout(K);
  gemm(M, N, K, 1.0f, A, lda, B_tiles, bl.next, bl, C, ldc, accumulate);
}

void amx_gemm_bf16_tiles_combined_kernel(int64_t M, int64_t N, int64_t K, const bf16_t* A,
                                         int64_t lda, const bf16_t* B1, const bf16_t* B2,
                                         CombineRows combine, float* stage, float* Y, int64_t ldy) {
  // As gemm() with a panel of columns at a time, both products' blocks of a 32-row strip into
  // `stage`, then the strip's rows combined from there (in L2) into Y.
  const BLayout bl = tiles_layout(K);
  const int64_t panel = combined_panel_columns(K);
  float* s1 = stage;
  float* s2 = stage + 32 * panel;
  _tile_loadconfig(&tile_config());
  for (int64_t p0 = 0; p0 < N; p0 += panel) {
    const int64_t p1 = std::min(N, p0 + panel), width = p1 - p0;
    for (int64_t m = 0; m < M; m += 32) {
      const bool m2 = m + 32 <= M;
      const bf16_t* a = A + m * lda;
      for (int64_t n = p0; n < p1; n += 32) {
        const bool n2 = n + 32 <= p1;
        for (int which = 0; which < 2; ++which) {
          const bf16_t* b = (which == 0 ? B1 : B2) + n / 16 * bl.next;
          float* c = (which == 0 ? s1 : s2) + (n - p0);
          any_block(m2, n2, K, 1.0f, a, lda, b, bl, c, width, false);
        }
      }
      for (int64_t r = 0; r < (m2 ? 32 : 16); ++r)
        combine(s1 + r * width, s2 + r * width, Y + (m + r) * ldy + p0, width);
    }
  }
  _tile_release();
}

void to_tiles_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* tiles) {
  // Pair-row j of tile (kb, nb) interleaves S's rows 32 kb + 2j and + 1 over columns 16 nb ..
  // + 15. Per row pair and 32 columns: one unpack and two permutes (as to_pairs_kernel), the two
  // 64-byte halves into the tiles of columns c and c + 16.
  const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  const int64_t per_16 = rows / 32 * 512;
  for (int64_t r = 0; r < rows; r += 2) {
    const bf16_t* s0 = S + r * lds;
    const bf16_t* s1 = s0 + lds;
    bf16_t* d = tiles + r / 32 * 512 + (r % 32) / 2 * 32;  // column block 0's pair-row
    for (int64_t c = 0; c < cols; c += 32) {
      const bool two = c + 32 <= cols;  // else the last 16 columns
      const __mmask32 m = two ? kAll32 : 0xFFFF;
      const __m512i a = _mm512_maskz_loadu_epi16(m, s0 + c),
                    b = _mm512_maskz_loadu_epi16(m, s1 + c);
      const __m512i lo = _mm512_maskz_unpacklo_epi16(kAll32, a, b);
      const __m512i hi = _mm512_maskz_unpackhi_epi16(kAll32, a, b);
      _mm512_store_si512(d + c / 16 * per_16, _mm512_permutex2var_epi64(lo, first, hi));
      if (two)
        _mm512_store_si512(d + (c / 16 + 1) * per_16, _mm512_permutex2var_epi64(lo, second, hi));
    }
  }
}

void to_tiles_transposed_kernel(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds,
                                bf16_t* tiles) {
  // B = S^T: tile (kb, nb)'s pair-row j holds the 32-bit elements 16 kb + j of S's rows 16 nb ..
  // + 15, so each tile is one 16 x 16 transpose of 32-bit elements, stored whole.
  for (int64_t n0 = 0; n0 < rows; n0 += 16) {
    bf16_t* d = tiles + n0 / 16 * (cols / 32 * 512);
    for (int64_t k0 = 0; k0 < cols; k0 += 32, d += 512) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_si512(S + (n0 + i) * lds + k0);
      transpose_16x16_epi32(v);
      for (int i = 0; i < 16; ++i) _mm512_store_si512(d + 32 * i, v[i]);
    }
  }
}

}  // namespace loom::detail
