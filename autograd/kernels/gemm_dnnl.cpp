// oneDNN bf16 matmul with f32 accumulation (oneDNN 2.6 has no BLAS-like bf16 gemm), with a
// per-thread cache of primitives keyed by shape, strides and accumulate: building a primitive
// costs far more than running a small one.
//
// On CPUs with AMX, oneDNN 2.6 runs its AMX kernels (brgemm) only when every operand is dense
// (A and B row- or column-major with no gaps, C with ldc == N); any other strides fall back to
// its older "gemm:jit" route, which for attention's block products (192 x 64 . 64 x 512, K and V
// read in place with a row stride of 192) ran at 16-44 GFLOP/s against 730-1,000 dense. A small
// product whose strided primitive is not brgemm while the dense one is AMX brgemm is therefore
// run on dense copies: the operands are gathered into per-thread scratch and the result added
// or copied back. Large products are left alone here, where the copy back would run on one
// thread: the weight tiles that write into a wider output (the LM head's) go through dense
// scratch in gemm_bf16.cpp, copied back by all threads.
#include <cstring>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <tuple>
#include <vector>

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

// How an operand is copied to dense scratch: not at all, as [rows x cols] row-major (its
// column stride is 1), or transposed (its row stride is 1; stored as [cols x rows] row-major,
// which oneDNN reads with strides (1, rows)).
enum class Pack { None, Rows, Cols };

struct CachedMatmul {
  dnnl::matmul prim;
  memory::desc a, b, c;
  // Dense copies (set when the product runs on them): how A and B are packed, and whether C
  // goes through a dense [M x N] buffer.
  bool dense = false;
  Pack pack_a = Pack::None, pack_b = Pack::None;
  bool pack_c = false;
};

// A product with at most this many outputs may run on dense copies (attention's blocks have
// 12k-100k; a projection tile 1-2 million).
constexpr int64_t kDenseCopyMaxOutputs = int64_t{1} << 18;

// Training uses a handful of shapes; a run that keeps changing M (e.g. generation) would grow
// the cache without bound, so it starts over past this size.
constexpr size_t kMaxCachedPrimitives = 256;

struct DnnlContext {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<MatmulKey, CachedMatmul> cache;
  std::vector<bf16_t> a_copy, b_copy;  // dense copies of strided operands
  std::vector<float> c_copy;
};

DnnlContext& context() {
  // Per thread: primitives are then never executed concurrently, which oneDNN's default
  // (library-owned) scratchpad requires.
  thread_local DnnlContext ctx;
  return ctx;
}

// Packing of a [rows x cols] operand with strides (s_row, s_col): none if it is dense already.
Pack pack_for(int64_t rows, int64_t cols, int64_t s_row, int64_t s_col) {
  if ((s_col == 1 && (s_row == cols || rows == 1)) || (s_row == 1 && (s_col == rows || cols == 1)))
    return Pack::None;
  return s_row == 1 ? Pack::Cols : Pack::Rows;
}

// Strides of a packed operand.
memory::dims packed_strides(Pack p, int64_t rows, int64_t cols, int64_t s_row, int64_t s_col) {
  if (p == Pack::Rows) return {cols, 1};
  if (p == Pack::Cols) return {1, rows};
  return {s_row, s_col};
}

bool is_amx_brgemm(const dnnl::matmul::primitive_desc& pd) {
  const std::string impl = pd.impl_info_str();
  return impl.rfind("brg", 0) == 0 && impl.find("amx") != std::string::npos;
}

dnnl::matmul::primitive_desc make_pd(const DnnlContext& ctx, const memory::desc& a,
                                     const memory::desc& b, const memory::desc& c, float alpha,
                                     bool accumulate) {
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});  // applied before the sum
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, ctx.engine);
}

CachedMatmul& lookup(DnnlContext& ctx, const MatmulKey& k) {
  auto it = ctx.cache.find(k);
  if (it != ctx.cache.end()) return it->second;
  if (ctx.cache.size() >= kMaxCachedPrimitives) ctx.cache.clear();
  using dt = memory::data_type;
  memory::desc a({k.M, k.K}, dt::bf16, memory::dims{k.a_stride_m, k.a_stride_k});
  memory::desc b({k.K, k.N}, dt::bf16, memory::dims{k.b_stride_k, k.b_stride_n});
  memory::desc c({k.M, k.N}, dt::f32, memory::dims{k.ldc, 1});
  dnnl::matmul::primitive_desc pd = make_pd(ctx, a, b, c, k.alpha, k.accumulate);
  CachedMatmul entry{dnnl::matmul(pd), a, b, c};
  const Pack pa = pack_for(k.M, k.K, k.a_stride_m, k.a_stride_k);
  const Pack pb = pack_for(k.K, k.N, k.b_stride_k, k.b_stride_n);
  const bool pc = k.ldc != k.N && k.M > 1;
  if (onednn_uses_amx() && (pa != Pack::None || pb != Pack::None || pc) &&
      k.M * k.N <= kDenseCopyMaxOutputs && !is_amx_brgemm(pd)) {
    // Dense C holds alpha . A . B alone; the copy back adds it when accumulating.
    memory::desc da({k.M, k.K}, dt::bf16, packed_strides(pa, k.M, k.K, k.a_stride_m, k.a_stride_k));
    memory::desc db({k.K, k.N}, dt::bf16, packed_strides(pb, k.K, k.N, k.b_stride_k, k.b_stride_n));
    memory::desc dc({k.M, k.N}, dt::f32, memory::dims{pc ? k.N : k.ldc, 1});
    dnnl::matmul::primitive_desc dense = make_pd(ctx, da, db, dc, k.alpha, k.accumulate && !pc);
    if (is_amx_brgemm(dense))
      entry = CachedMatmul{dnnl::matmul(dense), da, db, dc, true, pa, pb, pc};
  }
  return ctx.cache.emplace(k, std::move(entry)).first->second;
}

// Copies a strided [rows x cols] bf16 operand into dense scratch as `p` says; returns the data
// the product reads.
const bf16_t* pack_operand(Pack p, const bf16_t* src, int64_t rows, int64_t cols, int64_t s_row,
                           int64_t s_col, std::vector<bf16_t>& buf) {
  if (p == Pack::None) return src;
  buf.resize(static_cast<size_t>(rows * cols));
  bf16_t* dst = buf.data();
  if (p == Pack::Rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const bf16_t* in = src + r * s_row;
      bf16_t* out = dst + r * cols;
      if (s_col == 1)
        std::memcpy(out, in, static_cast<size_t>(cols) * sizeof(bf16_t));
      else
        for (int64_t j = 0; j < cols; ++j) out[j] = in[j * s_col];
    }
  } else {  // s_row == 1: each column is contiguous
    for (int64_t j = 0; j < cols; ++j)
      std::memcpy(dst + j * rows, src + j * s_col, static_cast<size_t>(rows) * sizeof(bf16_t));
  }
  return dst;
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
    const bf16_t* a_data = A;
    const bf16_t* b_data = B;
    float* c_data = C;
    if (mm.dense) {
      a_data = pack_operand(mm.pack_a, A, M, K, a_stride_m, a_stride_k, ctx.a_copy);
      b_data = pack_operand(mm.pack_b, B, K, N, b_stride_k, b_stride_n, ctx.b_copy);
      if (mm.pack_c) {
        ctx.c_copy.resize(static_cast<size_t>(M * N));
        c_data = ctx.c_copy.data();
      }
    }
    // oneDNN's memory takes non-const handles; the matmul only reads SRC and WEIGHTS.
    memory a(mm.a, ctx.engine, const_cast<bf16_t*>(a_data));
    memory b(mm.b, ctx.engine, const_cast<bf16_t*>(b_data));
    memory c(mm.c, ctx.engine, c_data);
    mm.prim.execute(ctx.stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    ctx.stream.wait();
    if (mm.dense && mm.pack_c) store_rows(c_data, M, N, C, ldc, accumulate);
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
