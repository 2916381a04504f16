// oneDNN bf16 matmul with f32 accumulation (oneDNN 2.6 has no BLAS-like bf16 gemm), with a
// per-thread cache of primitives keyed by shape, strides and accumulate: building a primitive
// costs far more than running a small one.
#include <oneapi/dnnl/dnnl.hpp>

#include <map>
#include <tuple>

#include "autograd/check.h"
#include "autograd/kernels/gemm_internal.h"

namespace loom::detail {
namespace {

using dnnl::memory;

struct MatmulKey {
  int64_t M, N, K, a_stride_m, a_stride_k, b_stride_k, b_stride_n, ldc;
  float alpha;
  bool accumulate;
  auto tie() const {
    return std::tie(M, N, K, a_stride_m, a_stride_k, b_stride_k, b_stride_n, ldc, alpha,
                    accumulate);
  }
  bool operator<(const MatmulKey& o) const { return tie() < o.tie(); }
};

struct CachedMatmul {
  dnnl::matmul prim;
  memory::desc a, b, c;
};

// Training uses a handful of shapes; a run that keeps changing M (e.g. generation) would grow
// the cache without bound, so it starts over past this size.
constexpr size_t kMaxCachedPrimitives = 256;

struct DnnlContext {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<MatmulKey, CachedMatmul> cache;
};

DnnlContext& context() {
  // Per thread: primitives are then never executed concurrently, which oneDNN's default
  // (library-owned) scratchpad requires.
  thread_local DnnlContext ctx;
  return ctx;
}

CachedMatmul& lookup(DnnlContext& ctx, const MatmulKey& k) {
  auto it = ctx.cache.find(k);
  if (it != ctx.cache.end()) return it->second;
  if (ctx.cache.size() >= kMaxCachedPrimitives) ctx.cache.clear();
  memory::desc a({k.M, k.K}, memory::data_type::bf16, memory::dims{k.a_stride_m, k.a_stride_k});
  memory::desc b({k.K, k.N}, memory::data_type::bf16, memory::dims{k.b_stride_k, k.b_stride_n});
  memory::desc c({k.M, k.N}, memory::data_type::f32, memory::dims{k.ldc, 1});
  dnnl::primitive_attr attr;
  if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});  // applied before the sum
  if (k.accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, ctx.engine);
  return ctx.cache.emplace(k, CachedMatmul{dnnl::matmul(pd), a, b, c}).first->second;
}

}  // namespace

void dnnl_matmul_bf16(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                      const bf16_t* B, int64_t b_stride_k, int64_t b_stride_n, float* C,
                      int64_t ldc, bool accumulate) {
  dnnl_matmul_bf16_strided(M, N, K, 1.0f, A, lda, 1, B, b_stride_k, b_stride_n, C, ldc,
                           accumulate);
}

void dnnl_matmul_bf16_strided(int64_t M, int64_t N, int64_t K, float alpha, const bf16_t* A,
                              int64_t a_stride_m, int64_t a_stride_k, const bf16_t* B,
                              int64_t b_stride_k, int64_t b_stride_n, float* C, int64_t ldc,
                              bool accumulate) {
  const MatmulKey key{M, N, K, a_stride_m, a_stride_k, b_stride_k, b_stride_n, ldc, alpha,
                      accumulate};
  try {
    DnnlContext& ctx = context();
    CachedMatmul& mm = lookup(ctx, key);
    // oneDNN's memory takes non-const handles; the matmul only reads SRC and WEIGHTS.
    memory a(mm.a, ctx.engine, const_cast<bf16_t*>(A));
    memory b(mm.b, ctx.engine, const_cast<bf16_t*>(B));
    memory c(mm.c, ctx.engine, C);
    mm.prim.execute(ctx.stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    ctx.stream.wait();
  } catch (const dnnl::error& e) {
    LOOM_FAIL(
        "oneDNN bf16 matmul [{} x {}] . [{} x {}] (A strides ({}, {}), B strides ({}, {}), "
        "ldc {}, alpha {}, accumulate {}) failed: {} (status {})",
        M, K, K, N, a_stride_m, a_stride_k, b_stride_k, b_stride_n, ldc, alpha, accumulate,
        e.what(),
        static_cast<int>(e.status));
  }
}

}  // namespace loom::detail
