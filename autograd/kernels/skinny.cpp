// Dispatch of the skinny LoRA products (skinny.h): the unpacked AVX-512 kernels where the CPU
// has AVX-512, else OpenBLAS through loom::sgemm.
#include "autograd/kernels/skinny.h"

#include <omp.h>

#include <algorithm>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/kernels/gemm.h"

namespace loom {
namespace {

bool use_avx512() {
  return cpu_features().avx512f;
}

// Below this many multiply-adds one thread does it: waking the team costs more.
constexpr int64_t kParallelMin = 1 << 16;

int threads_for(int64_t M, int64_t K, int64_t R) {
  return omp_in_parallel() || M * K * R < kParallelMin ? 1 : num_threads();
}

void check_shape(const char* op, int64_t M, int64_t K, int64_t R, int64_t ldx, int64_t ld_small) {
  LOOM_CHECK(M >= 0 && K >= 0 && R >= 0, "{}: negative shape M={} K={} R={}", op, M, K, R);
  LOOM_CHECK(ldx >= K && ld_small >= R, "{}: row strides {} / {} shorter than rows of {} / {}", op,
             ldx, ld_small, K, R);
}

}  // namespace

void skinny_product(int64_t M, int64_t K, int64_t R, float alpha, const float* X, int64_t ldx,
                    const float* F, float* out, int64_t ldo) {
  check_shape("skinny_product", M, K, R, ldx, ldo);
  if (M == 0 || R == 0) return;
  if (use_avx512())
    return detail::skinny_product_avx512(M, K, R, alpha, X, ldx, F, out, ldo, threads_for(M, K, R));
  sgemm(false, false, M, R, K, alpha, X, ldx, F, R, 0.0f, out, ldo);
}

void skinny_reduce(int64_t M, int64_t K, int64_t R, float alpha, const float* X, int64_t ldx,
                   const float* G, int64_t ldg, float* out) {
  check_shape("skinny_reduce", M, K, R, ldx, ldg);
  if (K == 0 || R == 0) return;
  if (use_avx512())
    return detail::skinny_reduce_avx512(M, K, R, alpha, X, ldx, G, ldg, out, threads_for(M, K, R));
  sgemm(true, false, K, R, M, alpha, X, ldx, G, ldg, 0.0f, out, R);
}

void skinny_product_reduce(int64_t M, int64_t K, int64_t R, const float* X, int64_t ldx,
                           float alpha_t, const float* F, float* t, int64_t ldt, float alpha_r,
                           const float* G, int64_t ldg, float* out) {
  check_shape("skinny_product_reduce", M, K, R, ldx, std::min(ldt, ldg));
  if (R == 0) return;
  if (use_avx512() && K > 0)
    return detail::skinny_product_reduce_avx512(M, K, R, X, ldx, alpha_t, F, t, ldt, alpha_r, G,
                                                ldg, out, threads_for(M, K, R));
  skinny_product(M, K, R, alpha_t, X, ldx, F, t, ldt);
  skinny_reduce(M, K, R, alpha_r, X, ldx, G, ldg, out);
}

}  // namespace loom
