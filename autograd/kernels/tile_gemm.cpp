// AMX detection and the pair layouts of tile_gemm.h; the kernel is in tile_gemm_amx.cpp.
#include "autograd/kernels/tile_gemm.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "autograd/check.h"

namespace loom {
namespace {

std::atomic<bool> g_allowed{true};

bool amx_granted() {
  static const bool granted = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
    if (!tile || !bf16) return false;
    // XCR0 bits 17 and 18 (tile configuration and tile data): the OS manages the tile state.
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;
    // Linux hands the tile data to a process that asks (ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); without it the first tile instruction kills the process.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
}

bool switched_off_by_env() {
  static const bool off = [] {
    const char* v = std::getenv("LOOM_NO_AMX");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  return off;
}

}  // namespace

bool amx_tiles_available() {
  return g_allowed.load(std::memory_order_relaxed) && !switched_off_by_env() && amx_granted();
}

void set_amx_tiles_allowed(bool allowed) {
  g_allowed.store(allowed, std::memory_order_relaxed);
}

void amx_gemm_bf16_pairs(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A, int64_t lda,
                         const bf16_t* B_pairs, int64_t ldp, float* C, int64_t ldc,
                         bool accumulate) {
  LOOM_CHECK(amx_tiles_available(), "amx_gemm_bf16_pairs: this CPU or process has no AMX tiles");
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0 && M % 16 == 0 && N % 16 == 0 && K % 32 == 0,
             "amx_gemm_bf16_pairs: M={} N={} K={} must be multiples of 16, 16 and 32", M, N, K);
  LOOM_CHECK(lda >= K && ldp >= N && ldc >= N,
             "amx_gemm_bf16_pairs: strides lda={} ldp={} ldc={} shorter than K={} / N={}", lda, ldp,
             ldc, K, N);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::memset(C + m * ldc, 0, sizeof(float) * N);
    return;
  }
  detail::amx_gemm_bf16_pairs_kernel(M, N, K, alpha, A, lda, B_pairs, ldp, C, ldc, accumulate);
}

void amx_gemm_bf16_tiles(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                         const bf16_t* B_tiles, float* C, int64_t ldc, bool accumulate) {
  LOOM_CHECK(amx_tiles_available(), "amx_gemm_bf16_tiles: this CPU or process has no AMX tiles");
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0 && M % 16 == 0 && N % 16 == 0 && K % 32 == 0,
             "amx_gemm_bf16_tiles: M={} N={} K={} must be multiples of 16, 16 and 32", M, N, K);
  LOOM_CHECK(lda >= K && ldc >= N,
             "amx_gemm_bf16_tiles: strides lda={} ldc={} shorter than K={} / N={}", lda, ldc, K, N);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::memset(C + m * ldc, 0, sizeof(float) * N);
    return;
  }
  detail::amx_gemm_bf16_tiles_kernel(M, N, K, A, lda, B_tiles, C, ldc, accumulate);
}

void amx_gemm_bf16_tiles_combined(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                                  const bf16_t* B1, const bf16_t* B2, CombineRows combine,
                                  float* stage, float* Y, int64_t ldy) {
  LOOM_CHECK(amx_tiles_available(),
             "amx_gemm_bf16_tiles_combined: this CPU or process has no AMX tiles");
  LOOM_CHECK(M >= 0 && N >= 0 && K > 0 && M % 16 == 0 && N % 16 == 0 && K % 32 == 0,
             "amx_gemm_bf16_tiles_combined: M={} N={} K={} must be multiples of 16, 16 and 32 "
             "(K > 0)",
             M, N, K);
  LOOM_CHECK(lda >= K && ldy >= N && combine != nullptr && stage != nullptr,
             "amx_gemm_bf16_tiles_combined: lda={} ldy={} shorter than K={} / N={}, or no "
             "combine / stage",
             lda, ldy, K, N);
  if (M == 0 || N == 0) return;
  detail::amx_gemm_bf16_tiles_combined_kernel(M, N, K, A, lda, B1, B2, combine, stage, Y, ldy);
}

void to_tiles(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* tiles) {
  LOOM_CHECK(amx_tiles_available(), "to_tiles: runs only where AMX tiles do");
  LOOM_CHECK(rows % 32 == 0 && cols % 16 == 0 && lds >= cols,
             "to_tiles: [{} x {}] (lds {}) is not whole tiles (rows a multiple of 32, cols of 16)",
             rows, cols, lds);
  LOOM_CHECK(reinterpret_cast<uintptr_t>(tiles) % 64 == 0,
             "to_tiles: the tiles' buffer {} is not 64-byte aligned (tiles are stored whole)",
             static_cast<const void*>(tiles));
  detail::to_tiles_kernel(S, rows, cols, lds, tiles);
}

void to_tiles_transposed(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* tiles) {
  LOOM_CHECK(amx_tiles_available(), "to_tiles_transposed: runs only where AMX tiles do");
  LOOM_CHECK(rows % 16 == 0 && cols % 32 == 0 && lds >= cols,
             "to_tiles_transposed: [{} x {}] (lds {}) is not whole tiles of its transpose (rows a "
             "multiple of 16, cols of 32)",
             rows, cols, lds);
  LOOM_CHECK(reinterpret_cast<uintptr_t>(tiles) % 64 == 0,
             "to_tiles_transposed: the tiles' buffer {} is not 64-byte aligned (tiles are stored "
             "whole)",
             static_cast<const void*>(tiles));
  detail::to_tiles_transposed_kernel(S, rows, cols, lds, tiles);
}

void transpose_bf16_rows32(const bf16_t* in, int64_t ldi, int64_t cols, bf16_t* out, int64_t ldo) {
  LOOM_CHECK(amx_tiles_available(), "transpose_bf16_rows32: runs only where AMX tiles do");
  LOOM_CHECK(cols >= 0 && cols % 32 == 0 && ldi >= cols && ldo >= 32,
             "transpose_bf16_rows32: cols={} (a multiple of 32), ldi={}, ldo={}", cols, ldi, ldo);
  detail::transpose_bf16_rows32_kernel(in, ldi, cols, out, ldo);
}

void to_pairs(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* pairs,
              int64_t ldp) {
  LOOM_CHECK(rows % 2 == 0 && ldp >= cols, "to_pairs: {} rows (must be even), ldp {} < {} cols",
             rows, ldp, cols);
  if (amx_tiles_available()) return detail::to_pairs_kernel(S, rows, cols, lds, pairs, ldp);
  for (int64_t r = 0; r < rows; r += 2) {
    const bf16_t* s0 = S + r * lds;
    const bf16_t* s1 = s0 + lds;
    bf16_t* d = pairs + r * ldp;  // pair-row r / 2
    for (int64_t c = 0; c < cols; ++c) {
      d[2 * c] = s0[c];
      d[2 * c + 1] = s1[c];
    }
  }
}

void to_pairs_transposed(const bf16_t* S, int64_t rows, int64_t cols, int64_t lds, bf16_t* pairs,
                         int64_t ldp) {
  LOOM_CHECK(cols % 2 == 0 && ldp >= rows,
             "to_pairs_transposed: {} cols (must be even), ldp {} < {} rows", cols, ldp, rows);
  // Pair (c/2, r) is S[r][c], S[r][c+1]: one 32-bit element of S's row r, so this is a
  // transpose of 32-bit elements, done 16 rows at a time (the rows stay in L1).
  if (amx_tiles_available())
    return detail::to_pairs_transposed_kernel(S, rows, cols, lds, pairs, ldp);
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t r1 = std::min<int64_t>(rows, r0 + 16);
    for (int64_t j = 0; j < cols / 2; ++j) {
      bf16_t* d = pairs + j * 2 * ldp;
      for (int64_t r = r0; r < r1; ++r) std::memcpy(d + 2 * r, S + r * lds + 2 * j, 4);
    }
  }
}

}  // namespace loom
