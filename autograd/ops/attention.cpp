// Fused scaled-dot-product attention with grouped-query heads, a causal mask and an optional
// document mask (packed sequences), FlashAttention-style in memory: the forward keeps only the
// per-row logsumexp; backward recomputes each block's probabilities from it.
//
// Work is split into tasks (batch b, kv head, block of query rows). The query rows of the
// kv head's whole group of q heads are stacked into one [group * rows x D] matrix, so each task
// runs a few larger GEMMs. Threads take whole tasks (each GEMM then runs on one thread): the
// forward any block, the backward whole (batch, kv head) groups, which share dK/dV rows. Only the key range a block can see is touched: causal blocks stop
// at their last row, document blocks start at their first document's first token.
// With bf16 precision the products read bf16 copies of q, k, v, dO (made once per call) and of
// each block's probabilities / score gradients; softmax, logsumexp and the dO.O correction stay f32.
#include <algorithm>
#include <cmath>
#include <memory>
#include <unordered_map>

#include "autograd/kernels/gemm.h"
#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"
#include "autograd/quant/quant.h"

namespace loom {

using namespace ops_detail;

namespace {

constexpr int64_t kBlockRows = 64;  // query rows per task (times the group size when stacked)

struct Geometry {
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, D = 0, G = 0;
  float scale = 1.0f;
  bool causal = true;
  bool has_docs = false;
};

// The keys query row i (of one batch row) may see lie in [lo[i], hi[i]); within that range a key
// also needs the same document id when documents are given.
struct MaskInfo {
  std::vector<int32_t> docs;  // [B*T] when has_docs
  std::vector<int64_t> lo, hi;  // [B*T]
};

MaskInfo build_mask(const Geometry& g, std::span<const int32_t> document_ids) {
  MaskInfo m;
  const int64_t n = g.B * g.T;
  m.lo.assign(static_cast<size_t>(n), 0);
  m.hi.assign(static_cast<size_t>(n), 0);
  if (g.has_docs) {
    m.docs.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      m.docs[static_cast<size_t>(i)] = document_ids[static_cast<size_t>(static_cast<int64_t>(document_ids.size()) == n ? i : i % g.T)];
  }
  for (int64_t b = 0; b < g.B; ++b) {
    std::unordered_map<int32_t, std::pair<int64_t, int64_t>> span_of;  // doc -> first, last
    if (g.has_docs) {
      for (int64_t t = 0; t < g.T; ++t) {
        auto [it, fresh] = span_of.try_emplace(m.docs[static_cast<size_t>(b * g.T + t)], t, t);
        if (!fresh) it->second.second = t;
      }
    }
    for (int64_t t = 0; t < g.T; ++t) {
      const size_t at = static_cast<size_t>(b * g.T + t);
      int64_t lo = 0, hi = g.causal ? t + 1 : g.T;
      if (g.has_docs) {
        const auto& [first, last] = span_of.at(m.docs[at]);
        lo = first;
        hi = std::min(hi, last + 1);
      }
      m.lo[at] = lo;
      m.hi[at] = hi;
    }
  }
  return m;
}

// One task's rows and key range.
struct Block {
  int64_t b, hk, i0, nq, ks, nk;
};

std::vector<Block> make_blocks(const Geometry& g, const MaskInfo& m) {
  std::vector<Block> blocks;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t hk = 0; hk < g.Hkv; ++hk)
      for (int64_t i0 = 0; i0 < g.T; i0 += kBlockRows) {
        const int64_t nq = std::min(kBlockRows, g.T - i0);
        int64_t ks = g.T, ke = 0;
        for (int64_t i = i0; i < i0 + nq; ++i) {
          ks = std::min(ks, m.lo[static_cast<size_t>(b * g.T + i)]);
          ke = std::max(ke, m.hi[static_cast<size_t>(b * g.T + i)]);
        }
        blocks.push_back({b, hk, i0, nq, ks, std::max<int64_t>(ke - ks, 0)});
      }
  return blocks;
}

// Offset of row (b, i0 + r, head hk*G + gi) of a [B, T, H, D] tensor.
inline int64_t row_offset(const Geometry& g, const Block& blk, int64_t H, int64_t gi, int64_t r) {
  return ((blk.b * g.T + blk.i0 + r) * H + blk.hk * g.G + gi) * g.D;
}

// Gathers the block's rows of every q head in the group into a stacked [G*nq x D] matrix
// (row gi*nq + r). T is float or the raw bf16 bits of a rounded copy.
template <class T>
void gather_rows(const Geometry& g, const Block& blk, const T* tensor, T* stacked) {
  for (int64_t gi = 0; gi < g.G; ++gi)
    for (int64_t r = 0; r < blk.nq; ++r)
      std::memcpy(stacked + (gi * blk.nq + r) * g.D, tensor + row_offset(g, blk, g.Hq, gi, r),
                  static_cast<size_t>(g.D) * sizeof(T));
}

// The inverse of gather_rows.
void scatter_rows(const Geometry& g, const Block& blk, const float* stacked, float* tensor) {
  for (int64_t gi = 0; gi < g.G; ++gi)
    for (int64_t r = 0; r < blk.nq; ++r)
      std::memcpy(tensor + row_offset(g, blk, g.Hq, gi, r), stacked + (gi * blk.nq + r) * g.D,
                  static_cast<size_t>(g.D) * sizeof(float));
}

// The visible key range [lo, hi) of stacked row r (query i0 + r % nq), relative to the block's
// first key, and the query's document id. Keys outside the range are masked; inside it, keys of
// another document are masked too (mask_docs).
struct RowRange {
  int64_t lo, hi;
  int32_t doc;
};

inline RowRange row_range(const Geometry& g, const MaskInfo& m, const Block& blk, int64_t r) {
  const size_t qi = static_cast<size_t>(blk.b * g.T + blk.i0 + r % blk.nq);
  const int64_t lo = std::min(blk.nk, m.lo[qi] - blk.ks);
  const int64_t hi = std::max(lo, std::min(blk.nk, m.hi[qi] - blk.ks));
  return {lo, hi, g.has_docs ? m.docs[qi] : 0};
}

inline const int32_t* block_docs(const Geometry& g, const MaskInfo& m, const Block& blk) {
  return g.has_docs ? m.docs.data() + blk.b * g.T + blk.ks : nullptr;
}

// Offset of the block's first key row (kv head hk) in a [B, T, Hkv, D] tensor.
inline int64_t kv_offset(const Geometry& g, const Block& blk) {
  return ((blk.b * g.T + blk.ks) * g.Hkv + blk.hk) * g.D;
}

// One matrix operand of a block product: element (i, j) is p[i * s0 + j * s1], f32 or bf16 bits
// as the product's precision says.
struct Mat {
  const void* p;
  int64_t s0, s1;
};

// C [M x N] (row stride ldc) = alpha * A . B (+ C), on the calling thread.
void block_gemm(bool bf16, int64_t M, int64_t N, int64_t K, float alpha, Mat a, Mat b, float* c,
                int64_t ldc, bool accumulate) {
  if (bf16)
    return gemm_bf16(M, N, K, alpha, static_cast<const uint16_t*>(a.p), a.s0, a.s1,
                     static_cast<const uint16_t*>(b.p), b.s0, b.s1, c, ldc, accumulate);
  const bool ta = a.s1 != 1, tb = b.s1 != 1;
  sgemm(ta, tb, M, N, K, alpha, static_cast<const float*>(a.p), ta ? a.s1 : a.s0,
        static_cast<const float*>(b.p), tb ? b.s1 : b.s0, accumulate ? 1.0f : 0.0f, c, ldc);
}

// A [B, T, H, D] tensor as the products read it: its f32 data, or (bf16 precision) a rounded
// copy made once per call.
struct Operand {
  const float* f32 = nullptr;
  std::vector<bf16_t> bf16;  // filled in bf16 mode
  Operand(const float* data, int64_t n, bool round) : f32(data) {
    if (!round) return;
    bf16.resize(static_cast<size_t>(n));
    parallel_ranges(n, [&](int64_t b, int64_t e) { convert_f32_to_bf16(data + b, bf16.data() + b, e - b); });
  }
  const void* at(int64_t offset) const {
    return bf16.empty() ? static_cast<const void*>(f32 + offset)
                        : static_cast<const void*>(bf16.data() + offset);
  }
};

// A growable buffer that is never zero-filled: every element a block reads it wrote first.
template <class T>
struct Buffer {
  std::unique_ptr<T[]> data;
  size_t size = 0;
  T* get(size_t n) {
    if (n > size) {
      data.reset(new T[n]);
      size = n;
    }
    return data.get();
  }
};

// Per-thread buffers of one block: stacked query (and dO) rows, f32 results, and the bf16
// copies of the stacked rows and of the probabilities / score gradients in bf16 mode. Kept per
// thread across calls (scratch()): a step calls attention 90 times, and fresh zeroed buffers of
// a few hundred KB each cost page faults and memsets every time.
struct Scratch {
  float *qs = nullptr, *dos = nullptr, *out_rows = nullptr, *p = nullptr, *dp = nullptr;
  bf16_t *qs_b = nullptr, *dos_b = nullptr, *p_b = nullptr, *dp_b = nullptr;
  void prepare(const Geometry& g, bool bf16, bool backward) {
    const size_t rows = static_cast<size_t>(g.G * kBlockRows * g.D);
    const size_t probs = static_cast<size_t>(g.G * kBlockRows * g.T);
    out_rows = f_[0].get(rows);
    p = f_[1].get(probs);
    if (backward) dp = f_[2].get(probs);
    if (bf16) {
      qs_b = b_[0].get(rows);
      p_b = b_[1].get(probs);
      if (backward) dos_b = b_[2].get(rows), dp_b = b_[3].get(probs);
    } else {
      qs = f_[3].get(rows);
      if (backward) dos = f_[4].get(rows);
    }
  }
  // Stacked rows of `t` for this block, in the products' precision.
  const void* stack(const Geometry& g, const Block& blk, const Operand& t, bool dout) {
    if (t.bf16.empty()) {
      float* dst = dout ? dos : qs;
      gather_rows(g, blk, t.f32, dst);
      return dst;
    }
    bf16_t* dst = dout ? dos_b : qs_b;
    gather_rows(g, blk, t.bf16.data(), dst);
    return dst;
  }
  // The [R x n] f32 matrix m (p or dp) as a product operand: itself, or rounded into its copy.
  const void* rounded(bool bf16, float* m, bf16_t* copy, int64_t n) {
    if (!bf16) return m;
    convert_f32_to_bf16(m, copy, n);
    return copy;
  }

 private:
  Buffer<float> f_[5];
  Buffer<bf16_t> b_[4];
};

Scratch& scratch(const Geometry& g, bool bf16, bool backward) {
  thread_local Scratch w;
  w.prepare(g, bf16, backward);
  return w;
}

// One block of the forward: rows of out and lse that no other block touches.
void forward_block(const Geometry& g, const MaskInfo& m, const Block& blk, const Operand& q,
                   const Operand& k, const Operand& v, float* out, float* lse, Scratch& w) {
  const VecKernels& vk = vec_kernels();
  const bool bf16 = !q.bf16.empty();
  const int64_t ldkv = g.Hkv * g.D;
  const int64_t R = g.G * blk.nq;
  float* lse_rows = lse + (blk.b * g.Hq + blk.hk * g.G) * g.T + blk.i0;  // + gi*T + r
  if (blk.nk == 0) {
    for (int64_t gi = 0; gi < g.G; ++gi)
      for (int64_t r = 0; r < blk.nq; ++r) {
        lse_rows[gi * g.T + r] = -std::numeric_limits<float>::infinity();
        std::fill_n(out + row_offset(g, blk, g.Hq, gi, r), g.D, 0.0f);  // no visible key: output 0
      }
    return;
  }
  const int64_t kv = kv_offset(g, blk);
  // S = scale Q K^T
  block_gemm(bf16, R, blk.nk, g.D, g.scale, {w.stack(g, blk, q, false), g.D, 1},
             {k.at(kv), 1, ldkv}, w.p, blk.nk, false);
  const int32_t* docs = block_docs(g, m, blk);
  for (int64_t r = 0; r < R; ++r) {
    float* sr = w.p + r * blk.nk;
    const RowRange rr = row_range(g, m, blk, r);
    const int64_t n = rr.hi - rr.lo;
    float* sv = sr + rr.lo;
    if (docs && n > 0) vk.mask_docs(sv, docs + rr.lo, rr.doc, n);
    const float mx = n > 0 ? vk.max(sv, n) : -std::numeric_limits<float>::infinity();
    float& row_lse = lse_rows[(r / blk.nq) * g.T + r % blk.nq];
    std::fill(sr, sv, 0.0f);
    std::fill(sv + n, sr + blk.nk, 0.0f);
    if (mx == -std::numeric_limits<float>::infinity()) {  // no visible key: output 0
      std::fill(sv, sv + n, 0.0f);
      row_lse = mx;
      continue;
    }
    const float l = vk.exp_sum(sv, sv, n, mx);
    vk.scale(sv, n, 1.0f / l);
    row_lse = mx + std::log(l);
  }
  // O = P V
  block_gemm(bf16, R, g.D, blk.nk, 1.0f, {w.rounded(bf16, w.p, w.p_b, R * blk.nk), blk.nk, 1},
             {v.at(kv), ldkv, 1}, w.out_rows, g.D, false);
  scatter_rows(g, blk, w.out_rows, out);
}

// Blocks are independent in the forward, so the threads take whole blocks (largest key range
// first, dynamically: causal blocks differ in size), each running its GEMMs on one thread.
void attention_forward(const Geometry& g, const MaskInfo& m, const std::vector<Block>& blocks,
                       const Operand& q, const Operand& k, const Operand& v, float* out,
                       float* lse) {
  std::vector<int64_t> order(blocks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return blocks[static_cast<size_t>(a)].nk > blocks[static_cast<size_t>(b)].nk;
  });
  const int64_t n = static_cast<int64_t>(order.size());
#pragma omp parallel if (n > 1)
  {
    Scratch& w = scratch(g, !q.bf16.empty(), false);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i)
      forward_block(g, m, blocks[static_cast<size_t>(order[static_cast<size_t>(i)])], q, k, v, out,
                    lse, w);
  }
}

struct Grads {
  float* dq;  // null when not needed
  float* dk;
  float* dv;
};

// delta = rowsum(dO * O) per (b, t, head) row [B*T*Hq]: the softmax Jacobian's correction term
// (f32), in one streaming pass over both tensors (per block the rows are strided and miss cache).
std::vector<float> row_deltas(const Geometry& g, const float* out, const float* dout) {
  const VecKernels& vk = vec_kernels();
  std::vector<float> delta(static_cast<size_t>(g.B * g.T * g.Hq));
  parallel_ranges(static_cast<int64_t>(delta.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      delta[static_cast<size_t>(i)] = vk.dot(out + i * g.D, dout + i * g.D, g.D);
  });
  return delta;
}

void backward_block(const Geometry& g, const MaskInfo& m, const Block& blk, const Operand& q,
                    const Operand& k, const Operand& v, const float* delta, const Operand& dout,
                    const float* lse, Grads grads, Scratch& w) {
  if (blk.nk == 0) return;  // no visible keys: zero gradients
  const VecKernels& vk = vec_kernels();
  const bool bf16 = !q.bf16.empty();
  const int64_t ldkv = g.Hkv * g.D;
  const int64_t R = g.G * blk.nq;
  const int64_t kv = kv_offset(g, blk);
  const float* lse_rows = lse + (blk.b * g.Hq + blk.hk * g.G) * g.T + blk.i0;
  const void* qs = w.stack(g, blk, q, false);
  const void* dos = w.stack(g, blk, dout, true);
  // P = exp(scale Q K^T - lse) under the mask; dP = dO V^T.
  block_gemm(bf16, R, blk.nk, g.D, g.scale, {qs, g.D, 1}, {k.at(kv), 1, ldkv}, w.p, blk.nk,
             false);
  block_gemm(bf16, R, blk.nk, g.D, 1.0f, {dos, g.D, 1}, {v.at(kv), 1, ldkv}, w.dp, blk.nk,
             false);
  const int32_t* docs = block_docs(g, m, blk);
  for (int64_t r = 0; r < R; ++r) {
    float* pr = w.p + r * blk.nk;
    float* dpr = w.dp + r * blk.nk;
    const float row_lse = lse_rows[(r / blk.nq) * g.T + r % blk.nq];
    const RowRange rr = row_range(g, m, blk, r);
    int64_t n = rr.hi - rr.lo;
    if (row_lse == -std::numeric_limits<float>::infinity()) n = 0;
    std::fill(pr, pr + rr.lo, 0.0f);
    std::fill(pr + rr.lo + n, pr + blk.nk, 0.0f);
    std::fill(dpr, dpr + rr.lo, 0.0f);
    std::fill(dpr + rr.lo + n, dpr + blk.nk, 0.0f);
    if (n == 0) continue;
    float* pv = pr + rr.lo;
    if (docs) vk.mask_docs(pv, docs + rr.lo, rr.doc, n);
    vk.exp_scale(pv, pv, n, row_lse, 1.0f);  // P = exp(S - lse)
    const int64_t row = row_offset(g, blk, g.Hq, r / blk.nq, r % blk.nq) / g.D;
    vk.softmax_grad(pv, dpr + rr.lo, n, delta[row]);  // dS = P * (dP - delta)
  }
  const void* ds = w.rounded(bf16, w.dp, w.dp_b, R * blk.nk);
  if (grads.dq) {  // dQ = scale dS K
    block_gemm(bf16, R, g.D, blk.nk, g.scale, {ds, blk.nk, 1}, {k.at(kv), ldkv, 1},
               w.out_rows, g.D, false);
    scatter_rows(g, blk, w.out_rows, grads.dq);
  }
  if (grads.dk)  // dK += scale dS^T Q
    block_gemm(bf16, blk.nk, g.D, R, g.scale, {ds, 1, blk.nk}, {qs, g.D, 1}, grads.dk + kv, ldkv,
               true);
  if (grads.dv)  // dV += P^T dO
    block_gemm(bf16, blk.nk, g.D, R, 1.0f, {w.rounded(bf16, w.p, w.p_b, R * blk.nk), 1, blk.nk},
               {dos, g.D, 1}, grads.dv + kv, ldkv, true);
}

// The blocks of one (batch, kv head) group all add into the same dK/dV rows, so a thread takes
// whole groups and runs their blocks in order: the sums, and so the gradients, do not depend on
// the number of threads or on which thread ran what.
void attention_backward(const Geometry& g, const MaskInfo& m, const std::vector<Block>& blocks,
                        const Operand& q, const Operand& k, const Operand& v, const float* out,
                        const Operand& dout, const float* lse, Grads grads) {
  const std::vector<float> delta = row_deltas(g, out, dout.f32);
  const int64_t groups = g.B * g.Hkv;
  const int64_t per_group = static_cast<int64_t>(blocks.size()) / std::max<int64_t>(groups, 1);
#pragma omp parallel if (groups > 1)
  {
    Scratch& w = scratch(g, !q.bf16.empty(), true);
#pragma omp for schedule(dynamic, 1)
    for (int64_t gr = 0; gr < groups; ++gr)
      for (int64_t i = gr * per_group; i < (gr + 1) * per_group; ++i)
        backward_block(g, m, blocks[static_cast<size_t>(i)], q, k, v, delta.data(), dout, lse,
                       grads, w);
  }
}

}  // namespace

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                 const AttentionOptions& options) {
  check_f32("attention", "q", q_in);
  check_f32("attention", "k", k_in);
  check_f32("attention", "v", v_in);
  LOOM_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4,
             "attention: expected q [B, T, Hq, D], k and v [B, T, Hkv, D], got q {}, k {}, v {}",
             shape_str(q_in.shape()), shape_str(k_in.shape()), shape_str(v_in.shape()));
  Geometry g;
  g.B = q_in.shape()[0];
  g.T = q_in.shape()[1];
  g.Hq = q_in.shape()[2];
  g.D = q_in.shape()[3];
  g.Hkv = k_in.shape()[2];
  LOOM_CHECK(k_in.shape() == v_in.shape(), "attention: k {} and v {} must have the same shape",
             shape_str(k_in.shape()), shape_str(v_in.shape()));
  LOOM_CHECK(k_in.shape()[0] == g.B && k_in.shape()[1] == g.T && k_in.shape()[3] == g.D,
             "attention: k {} does not match q {}: expected [{}, {}, Hkv, {}]", shape_str(k_in.shape()),
             shape_str(q_in.shape()), g.B, g.T, g.D);
  LOOM_CHECK(g.Hkv > 0 && g.Hq % g.Hkv == 0,
             "attention: q heads ({}) must be a multiple of k/v heads ({})", g.Hq, g.Hkv);
  g.G = g.Hq / g.Hkv;
  g.causal = options.causal;
  g.has_docs = !options.document_ids.empty();
  LOOM_CHECK(!g.has_docs || static_cast<int64_t>(options.document_ids.size()) == g.T ||
                 static_cast<int64_t>(options.document_ids.size()) == g.B * g.T,
             "attention: document_ids has {} entries, expected T={} or B*T={}",
             options.document_ids.size(), g.T, g.B * g.T);
  g.scale = options.scale != 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(g.D));

  const Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
  auto mask = std::make_shared<MaskInfo>(build_mask(g, options.document_ids));
  auto blocks = std::make_shared<std::vector<Block>>(make_blocks(g, *mask));
  const bool bf16 = resolve_precision(options.precision) == Precision::BF16;
  // The output and the per-row logsumexp; with options.keep_for_recompute a checkpointed
  // block's recompute takes both from its first run instead of running the forward again.
  Tensor lse;
  const auto forward = [&] {
    Tensor o = empty_f32(q.shape());  // every row written (forward_block)
    lse = empty_f32({g.B * g.Hq * g.T});
    if (g.D > 0)
      attention_forward(g, *mask, *blocks, Operand(q.data_f32(), q.numel(), bf16),
                        Operand(k.data_f32(), k.numel(), bf16),
                        Operand(v.data_f32(), v.numel(), bf16), o.data_f32(), lse.data_f32());
    return o;
  };
  const Tensor out = options.keep_for_recompute ? keep_for_recompute(forward) : forward();
  if (options.keep_for_recompute) lse = keep_for_recompute([&] { return lse; });

  const bool need_q = q.requires_grad(), need_k = k.requires_grad(), need_v = v.requires_grad();
  return record(out, "attention", {q, k, v}, [=](const Tensor& g_in, const Tensor& o) {
    const Tensor dout = dense(g_in);
    Tensor dq = need_q ? new_f32(q.shape()) : Tensor();
    Tensor dk = need_k ? new_f32(k.shape()) : Tensor();
    Tensor dv = need_v ? new_f32(v.shape()) : Tensor();
    if (g.D > 0)
      attention_backward(g, *mask, *blocks, Operand(q.data_f32(), q.numel(), bf16),
                         Operand(k.data_f32(), k.numel(), bf16),
                         Operand(v.data_f32(), v.numel(), bf16), o.data_f32(),
                         Operand(dout.data_f32(), dout.numel(), bf16), lse.data_f32(),
                         {need_q ? dq.data_f32() : nullptr, need_k ? dk.data_f32() : nullptr,
                          need_v ? dv.data_f32() : nullptr});
    return std::vector<Tensor>{dq, dk, dv};
  });
}

}  // namespace loom
