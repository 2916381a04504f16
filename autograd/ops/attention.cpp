// Fused scaled-dot-product attention with grouped-query heads, a causal mask and an optional
// document mask (packed sequences), FlashAttention-style in memory: the forward keeps only the
// per-row logsumexp; backward recomputes each block's probabilities from it.
//
// Work is split into tasks (batch b, kv head, block of query rows). The query rows of the
// kv head's whole group of q heads form one [group * rows x D] matrix, so each task runs a few
// larger GEMMs. Threads take whole tasks (each GEMM then runs on one thread): the forward any
// block, the backward whole (batch, kv head) groups, which share dK/dV rows. Only the key range
// a block can see is touched: causal blocks stop at their last row, document blocks start at
// their first document's first token.
// The products read copies of q, k, v and dO in a grouped layout made once per call (Operand),
// bf16 with bf16 precision, as are each block's probabilities / score gradients; softmax,
// logsumexp and the dO.O correction stay f32.
// Where the CPU has AMX tiles (tile_gemm.h), a block runs in strips of 32 stacked query rows:
// the strip's scores are made on the tiles, turned into probabilities at once and its output
// rows (forward) or dQ rows (backward) made from them, while the strip (at most 32 x T f32) is
// in the nearest caches. oneDNN's product of a whole block's scores (192 x 512 f32, 393 KB) was
// bound by writing them out to L2 (~330 GFLOP/s on one core) and the softmax read them back.
#include <algorithm>
#include <cmath>
#include <memory>
#include <unordered_map>

#include "autograd/kernels/gemm.h"
#include "autograd/kernels/tile_gemm.h"
#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"
#include "autograd/quant/quant.h"

namespace loom {

using namespace ops_detail;

namespace {

constexpr int64_t kBlockRows = 64;  // query rows per task (times the group size when stacked)
// Stacked rows per strip on AMX tiles: two tiles' rows (16-row strips read each K^T / V slice
// twice as often and measured slower).
constexpr int64_t kTileStrip = 32;
// On AMX tiles a block's key range starts and ends on this many keys (the tile products' depth;
// the keys added are masked like any other key out of range).
constexpr int64_t kTileKeys = 32;

struct Geometry {
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, D = 0, G = 0;
  float scale = 1.0f;
  bool causal = true;
  bool has_docs = false;
  bool tiles = false;  // bf16 products on AMX tiles, in strips (tiles_fit)
};

// The AMX route's shapes: key ranges rounded to kTileKeys within T, whole strips per block and
// a head dimension of whole tile depths.
bool tiles_fit(const Geometry& g) {
  return g.T % kTileKeys == 0 && g.D % 32 == 0 && (g.G * kBlockRows) % kTileStrip == 0 &&
         (g.G * (g.T % kBlockRows)) % kTileStrip == 0;
}

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
        if (g.tiles && ke > ks) {
          ks = ks / kTileKeys * kTileKeys;
          ke = std::min(g.T, (ke + kTileKeys - 1) / kTileKeys * kTileKeys);
        }
        blocks.push_back({b, hk, i0, nq, ks, std::max<int64_t>(ke - ks, 0)});
      }
  return blocks;
}

// The products read q, k, v and dO from copies in a grouped layout, made once per call:
// [B, Hkv, T, G', D] for a [B, T, H, D] tensor with G' = H / Hkv heads per kv head. A block's
// query rows of all G q heads are then one dense [nq * G x D] matrix (stacked row r is query
// i0 + r / G of q head hk * G + r % G) and its keys and values dense [nk x D] ones, so every
// product runs on its operands in place (oneDNN's AMX kernels need dense operands; strided ones
// were copied per product). In bf16 precision the copies are the rounded ones.
//
// data ([B, T, H, D] f32) in the grouped layout, rounded to bf16 or as f32.
Tensor grouped_copy(const Geometry& g, const float* data, int64_t H, bool round) {
  const int64_t per_t = H / g.Hkv * g.D;
  Tensor t = Tensor::empty({g.B, g.Hkv, g.T, per_t}, round ? DType::BF16 : DType::F32);
  const int64_t n = t.numel();
  auto* dst_bf16 = static_cast<bf16_t*>(t.data_bytes());
  auto* dst_f32 = static_cast<float*>(t.data_bytes());
  // One run of per_t elements per (b, t, kv head): from [b, t, hk * G', 0] to [b, hk, t, 0, 0].
  const int64_t runs = g.B * g.T * g.Hkv;
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < runs; ++i) {
    const int64_t b = i / (g.T * g.Hkv), tt = i / g.Hkv % g.T, hk = i % g.Hkv;
    const float* src = data + i * per_t;
    const int64_t dst = ((b * g.Hkv + hk) * g.T + tt) * per_t;
    if (round)
      convert_f32_to_bf16(src, dst_bf16 + dst, per_t);
    else
      std::memcpy(dst_f32 + dst, src, static_cast<size_t>(per_t) * sizeof(float));
  }
  return t;
}

// An operand of the products: a grouped copy (grouped_copy).
struct Operand {
  Tensor t;
  int64_t per_t = 0;  // G' * D: elements of one position of one kv head
  explicit Operand(Tensor grouped) : t(std::move(grouped)), per_t(t.size(3)) {}
  Operand(const Geometry& g, const float* data, int64_t H, bool round)
      : Operand(grouped_copy(g, data, H, round)) {}
  bool rounded() const { return t.dtype() == DType::BF16; }
  // The block's first row (position ks or i0 of kv head hk of batch row b).
  const void* at(const Geometry& g, int64_t b, int64_t hk, int64_t pos) const {
    const int64_t offset = ((b * g.Hkv + hk) * g.T + pos) * per_t;
    return rounded() ? static_cast<const void*>(static_cast<const bf16_t*>(t.data_bytes()) + offset)
                     : static_cast<const void*>(static_cast<const float*>(t.data_bytes()) + offset);
  }
};

// On AMX tiles, the B operands of the tile products in pairs (tile_gemm.h), per (batch, kv
// head) group, made once per call from the grouped bf16 copies: K^T and V^T for the scores (S =
// Q K^T, dP = dO V^T; pair-rows of T keys), K and V for the output and dQ (O = P V, dQ = dS K;
// pair-rows of D), and the stacked rows of Q and dO for dK and dV (dK = dS^T Q, dV = P^T dO).
struct TilePair {
  Tensor t;
  bool transposed = false;
  int64_t rows = 0;  // per group: T, or T * G for q and dO
  TilePair() = default;
  TilePair(const Geometry& g, const Operand& x, bool transpose)
      : transposed(transpose), rows(g.T * x.per_t / g.D) {
    t = Tensor::empty({g.B * g.Hkv, rows * g.D}, DType::BF16);
    const auto* src = static_cast<const bf16_t*>(x.t.data_bytes());
    auto* dst = static_cast<bf16_t*>(t.data_bytes());
    const int64_t groups = g.B * g.Hkv, n = rows * g.D;
#pragma omp parallel for schedule(static) if (groups > 1 && groups * n >= kParallelMinElements)
    for (int64_t i = 0; i < groups; ++i) {
      if (transposed)
        to_pairs_transposed(src + i * n, rows, g.D, g.D, dst + i * n, rows);
      else
        to_pairs(src + i * n, rows, g.D, g.D, dst + i * n, g.D);
    }
  }
  // B from row `row0` (even) of the block's group on: its first column (transposed) or first
  // pair-row.
  const bf16_t* at(const Geometry& g, const Block& blk, int64_t row0) const {
    const auto* base =
        static_cast<const bf16_t*>(t.data_bytes()) + (blk.b * g.Hkv + blk.hk) * rows * g.D;
    return transposed ? base + 2 * row0 : base + row0 * g.D;
  }
  // From the block's first key (K and V).
  const bf16_t* at(const Geometry& g, const Block& blk) const {
    return at(g, blk, blk.ks);
  }
  // Pairs per pair-row.
  int64_t ldp(const Geometry& g) const {
    return transposed ? rows : g.D;
  }
};

// Copies the block's stacked [nq * G x D] rows into a [B, T, Hq, D] tensor: G heads of one
// position are one contiguous run there.
void scatter_rows(const Geometry& g, const Block& blk, const float* stacked, float* tensor) {
  for (int64_t r = 0; r < blk.nq; ++r)
    std::memcpy(tensor + ((blk.b * g.T + blk.i0 + r) * g.Hq + blk.hk * g.G) * g.D,
                stacked + r * g.G * g.D, static_cast<size_t>(g.G * g.D) * sizeof(float));
}

// The visible key range [lo, hi) of stacked row r (query i0 + r / G), relative to the block's
// first key, and the query's document id. Keys outside the range are masked; inside it, keys of
// another document are masked too (mask_docs).
struct RowRange {
  int64_t lo, hi;
  int32_t doc;
};

inline RowRange row_range(const Geometry& g, const MaskInfo& m, const Block& blk, int64_t r) {
  const size_t qi = static_cast<size_t>(blk.b * g.T + blk.i0 + r / g.G);
  const int64_t lo = std::min(blk.nk, m.lo[qi] - blk.ks);
  const int64_t hi = std::max(lo, std::min(blk.nk, m.hi[qi] - blk.ks));
  return {lo, hi, g.has_docs ? m.docs[qi] : 0};
}

// Index of stacked row r's (position, q head) in [B, T, Hq] order (row deltas) and in the
// [B, Hq, T] order of the logsumexps.
inline int64_t bth_index(const Geometry& g, const Block& blk, int64_t r) {
  return (blk.b * g.T + blk.i0 + r / g.G) * g.Hq + blk.hk * g.G + r % g.G;
}
inline int64_t lse_index(const Geometry& g, const Block& blk, int64_t r) {
  return (blk.b * g.Hq + blk.hk * g.G + r % g.G) * g.T + blk.i0 + r / g.G;
}

inline const int32_t* block_docs(const Geometry& g, const MaskInfo& m, const Block& blk) {
  return g.has_docs ? m.docs.data() + blk.b * g.T + blk.ks : nullptr;
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
  // BLAS form of a [rows x cols] operand: row-major (unit column stride; a single row may
  // have any row stride) or transposed (unit row stride), and its leading dimension.
  const auto blas = [](Mat m, int64_t rows, int64_t cols) {
    if (m.s1 == 1 && (m.s0 >= cols || rows == 1)) return std::pair{false, std::max(m.s0, cols)};
    return std::pair{true, std::max(m.s1, rows)};
  };
  const auto [ta, lda] = blas(a, M, K);
  const auto [tb, ldb] = blas(b, K, N);
  sgemm(ta, tb, M, N, K, alpha, static_cast<const float*>(a.p), lda, static_cast<const float*>(b.p),
        ldb, accumulate ? 1.0f : 0.0f, c, ldc);
}

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

// Per-thread buffers of one block: the f32 results and, in bf16 mode, the bf16 probabilities /
// score gradients the products read, and the forward's per-row 1 / sum. Kept per thread across
// calls (scratch()): a step calls attention 90 times, and fresh zeroed buffers of a few hundred KB
// each cost page faults and memsets every time.
struct Scratch {
  float *out_rows = nullptr, *p = nullptr, *dp = nullptr, *inv_sum = nullptr;
  bf16_t *p_b = nullptr, *dp_b = nullptr;
  bf16_t *p_t = nullptr, *ds_t = nullptr;  // on AMX tiles: P^T and dS^T [nk x rows]
  void prepare(const Geometry& g, bool bf16, bool backward) {
    const size_t rows = static_cast<size_t>(g.G * kBlockRows * g.D);
    const size_t probs = static_cast<size_t>(g.G * kBlockRows * g.T);
    out_rows = f_[0].get(rows);
    p = f_[1].get(probs);
    inv_sum = f_[3].get(static_cast<size_t>(g.G * kBlockRows));
    if (backward) dp = f_[2].get(probs);
    if (bf16) {
      p_b = b_[0].get(probs);
      if (backward) dp_b = b_[1].get(probs);
    }
    if (backward && g.tiles) {
      p_t = b_[2].get(probs);
      ds_t = b_[3].get(probs);
    }
  }

 private:
  Buffer<float> f_[4];
  Buffer<bf16_t> b_[4];
};

Scratch& scratch(const Geometry& g, bool bf16, bool backward) {
  thread_local Scratch w;
  w.prepare(g, bf16, backward);
  return w;
}

// One block of the forward: rows of out and lse that no other block touches.
// kt / vp: K^T and V in pairs (TilePair), read on AMX tiles only (empty elsewhere).
void forward_block(const Geometry& g, const MaskInfo& m, const Block& blk, const Operand& q,
                   const Operand& k, const Operand& v, const TilePair* kt, const TilePair* vp,
                   float* out, float* lse, Scratch& w) {
  const VecKernels& vk = vec_kernels();
  const bool bf16 = q.rounded();
  const int64_t R = g.G * blk.nq;
  if (blk.nk == 0) {
    for (int64_t r = 0; r < R; ++r) {
      lse[lse_index(g, blk, r)] = -std::numeric_limits<float>::infinity();
      std::fill_n(out + bth_index(g, blk, r) * g.D, g.D, 0.0f);  // no visible key: output 0
    }
    return;
  }
  const void* keys = k.at(g, blk.b, blk.hk, blk.ks);
  const void* values = v.at(g, blk.b, blk.hk, blk.ks);
  const void* queries = q.at(g, blk.b, blk.hk, blk.i0);
  const int32_t* docs = block_docs(g, m, blk);
  // Row r's softmax: f32 probabilities in place, or (bf16) the unnormalized e^(s - max)
  // rounded into p_b with the row's 1 / sum applied to its output row instead.
  const auto softmax_row = [&](int64_t r) {
    float* sr = w.p + r * blk.nk;
    const RowRange rr = row_range(g, m, blk, r);
    const int64_t n = rr.hi - rr.lo;
    float* sv = sr + rr.lo;
    if (docs && n > 0) vk.mask_docs(sv, docs + rr.lo, rr.doc, n);
    const float mx = n > 0 ? vk.max(sv, n) : -std::numeric_limits<float>::infinity();
    float& row_lse = lse[lse_index(g, blk, r)];
    const bool visible = mx != -std::numeric_limits<float>::infinity();
    if (bf16) {
      // The row from its first visible key to the block's end, the keys past its last visible
      // one at -inf (e^-inf = 0): whole vectors for the kernel (a causal block's nk is a
      // multiple of 64) instead of a ragged tail per row.
      bf16_t* pr = w.p_b + r * blk.nk;
      std::fill(pr, pr + rr.lo, bf16_t{0});
      if (!visible) {  // no visible key: output 0
        std::fill(pr + rr.lo, pr + blk.nk, bf16_t{0});
        w.inv_sum[r] = 0.0f;
        row_lse = mx;
        return;
      }
      std::fill(sv + n, sr + blk.nk, -std::numeric_limits<float>::infinity());
      const float l = vk.exp_sum_bf16(sv, pr + rr.lo, blk.nk - rr.lo, mx);
      w.inv_sum[r] = 1.0f / l;
      row_lse = mx + std::log(l);
      return;
    }
    std::fill(sr, sv, 0.0f);
    std::fill(sv + n, sr + blk.nk, 0.0f);
    if (!visible) {  // no visible key: output 0
      std::fill(sv, sv + n, 0.0f);
      row_lse = mx;
      return;
    }
    const float l = vk.exp_sum(sv, sv, n, mx);
    vk.scale(sv, n, 1.0f / l);
    row_lse = mx + std::log(l);
  };
  if (g.tiles) {
    // Per strip: S = scale Q K^T, its softmax, O = P V, all while the strip is in cache.
    const auto* qb = static_cast<const bf16_t*>(queries);
    for (int64_t r0 = 0; r0 < R; r0 += kTileStrip) {
      amx_gemm_bf16_pairs(kTileStrip, blk.nk, g.D, g.scale, qb + r0 * g.D, g.D, kt->at(g, blk),
                          kt->ldp(g), w.p + r0 * blk.nk, blk.nk, false);
      for (int64_t r = r0; r < r0 + kTileStrip; ++r) softmax_row(r);
      amx_gemm_bf16_pairs(kTileStrip, g.D, blk.nk, 1.0f, w.p_b + r0 * blk.nk, blk.nk,
                          vp->at(g, blk), vp->ldp(g), w.out_rows + r0 * g.D, g.D, false);
    }
  } else {
    // S = scale Q K^T
    block_gemm(bf16, R, blk.nk, g.D, g.scale, {queries, g.D, 1}, {keys, 1, g.D}, w.p, blk.nk,
               false);
    for (int64_t r = 0; r < R; ++r) softmax_row(r);
    // O = P V
    block_gemm(bf16, R, g.D, blk.nk, 1.0f,
               {bf16 ? static_cast<const void*>(w.p_b) : w.p, blk.nk, 1}, {values, g.D, 1},
               w.out_rows, g.D, false);
  }
  if (bf16)
    for (int64_t r = 0; r < R; ++r) vk.scale(w.out_rows + r * g.D, g.D, w.inv_sum[r]);
  scatter_rows(g, blk, w.out_rows, out);
}

// Blocks are independent in the forward, so the threads take whole blocks (largest key range
// first, dynamically: causal blocks differ in size), each running its GEMMs on one thread.
void attention_forward(const Geometry& g, const MaskInfo& m, const std::vector<Block>& blocks,
                       const Operand& q, const Operand& k, const Operand& v, float* out,
                       float* lse) {
  const TilePair kt = g.tiles ? TilePair(g, k, true) : TilePair();
  const TilePair vp = g.tiles ? TilePair(g, v, false) : TilePair();
  std::vector<int64_t> order(blocks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return blocks[static_cast<size_t>(a)].nk > blocks[static_cast<size_t>(b)].nk;
  });
  const int64_t n = static_cast<int64_t>(order.size());
#pragma omp parallel if (n > 1)
  {
    Scratch& w = scratch(g, q.rounded(), false);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i)
      forward_block(g, m, blocks[static_cast<size_t>(order[static_cast<size_t>(i)])], q, k, v, &kt,
                    &vp, out, lse, w);
  }
}

struct Grads {
  float* dq;  // [B, T, Hq, D]; null when not needed
  float* dk;  // [B, Hkv, T, D] (the grouped layout, zeroed); null when not needed
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

// The B operands on AMX tiles (TilePair; empty elsewhere).
struct BackwardPairs {
  const TilePair *kt, *vt, *k, *q, *dout;
};

void backward_block(const Geometry& g, const MaskInfo& m, const Block& blk, const Operand& q,
                    const Operand& k, const Operand& v, const BackwardPairs& tp, const float* delta,
                    const Operand& dout, const float* lse, Grads grads, Scratch& w) {
  if (blk.nk == 0) {  // no visible keys: zero gradients (dK, dV start at zero; dQ's rows
                      // are written by their block alone)
    if (grads.dq)
      for (int64_t r = 0; r < blk.nq; ++r)
        std::fill_n(grads.dq + ((blk.b * g.T + blk.i0 + r) * g.Hq + blk.hk * g.G) * g.D, g.G * g.D,
                    0.0f);
    return;
  }
  const VecKernels& vk = vec_kernels();
  const bool bf16 = q.rounded();
  const int64_t R = g.G * blk.nq;
  const void* qs = q.at(g, blk.b, blk.hk, blk.i0);
  const void* dos = dout.at(g, blk.b, blk.hk, blk.i0);
  const void* keys = k.at(g, blk.b, blk.hk, blk.ks);
  const void* values = v.at(g, blk.b, blk.hk, blk.ks);
  const int32_t* docs = block_docs(g, m, blk);
  // Row r's P = exp(scale Q K^T - lse) under the mask and dS = P * (dP - delta), from its S and
  // dP in w.p and w.dp.
  const auto gradient_row = [&](int64_t r) {
    float* pr = w.p + r * blk.nk;
    float* dpr = w.dp + r * blk.nk;
    const float row_lse = lse[lse_index(g, blk, r)];
    const RowRange rr = row_range(g, m, blk, r);
    int64_t n = rr.hi - rr.lo;
    if (row_lse == -std::numeric_limits<float>::infinity()) n = 0;
    float* pv = pr + rr.lo;
    if (docs && n > 0) vk.mask_docs(pv, docs + rr.lo, rr.doc, n);
    const float delta_r = delta[bth_index(g, blk, r)];
    if (bf16) {  // P and dS straight into the products' bf16 copies
      // As in the forward: to the block's end, the keys past the last visible one at -inf
      // (P = 0 there, and so dS).
      bf16_t* pb = w.p_b + r * blk.nk;
      bf16_t* dsb = w.dp_b + r * blk.nk;
      std::fill(pb, pb + rr.lo, bf16_t{0});
      std::fill(dsb, dsb + rr.lo, bf16_t{0});
      if (n == 0) {
        std::fill(pb + rr.lo, pb + blk.nk, bf16_t{0});
        std::fill(dsb + rr.lo, dsb + blk.nk, bf16_t{0});
        return;
      }
      std::fill(pv + n, pr + blk.nk, -std::numeric_limits<float>::infinity());
      vk.softmax_grad_bf16(pv, dpr + rr.lo, blk.nk - rr.lo, row_lse, delta_r, pb + rr.lo,
                           dsb + rr.lo);
      return;
    }
    std::fill(pr, pr + rr.lo, 0.0f);
    std::fill(pr + rr.lo + n, pr + blk.nk, 0.0f);
    std::fill(dpr, dpr + rr.lo, 0.0f);
    std::fill(dpr + rr.lo + n, dpr + blk.nk, 0.0f);
    if (n == 0) return;
    vk.exp_scale(pv, pv, n, row_lse, 1.0f);  // P = exp(S - lse)
    vk.softmax_grad(pv, dpr + rr.lo, n, delta_r);  // dS = P * (dP - delta)
  };
  const void* ds = bf16 ? static_cast<const void*>(w.dp_b) : w.dp;
  const void* p = bf16 ? static_cast<const void*>(w.p_b) : w.p;
  if (g.tiles) {
    // Per strip: S = scale Q K^T and dP = dO V^T, the strip's P and dS, dQ = scale dS K, and P
    // and dS transposed for dK and dV, all while the strip is in cache.
    const auto* qb = static_cast<const bf16_t*>(qs);
    const auto* dob = static_cast<const bf16_t*>(dos);
    for (int64_t r0 = 0; r0 < R; r0 += kTileStrip) {
      amx_gemm_bf16_pairs(kTileStrip, blk.nk, g.D, g.scale, qb + r0 * g.D, g.D, tp.kt->at(g, blk),
                          tp.kt->ldp(g), w.p + r0 * blk.nk, blk.nk, false);
      amx_gemm_bf16_pairs(kTileStrip, blk.nk, g.D, 1.0f, dob + r0 * g.D, g.D, tp.vt->at(g, blk),
                          tp.vt->ldp(g), w.dp + r0 * blk.nk, blk.nk, false);
      for (int64_t r = r0; r < r0 + kTileStrip; ++r) gradient_row(r);
      if (grads.dq)
        amx_gemm_bf16_pairs(kTileStrip, g.D, blk.nk, g.scale, w.dp_b + r0 * blk.nk, blk.nk,
                            tp.k->at(g, blk), tp.k->ldp(g), w.out_rows + r0 * g.D, g.D, false);
      if (grads.dk) transpose_bf16_rows32(w.dp_b + r0 * blk.nk, blk.nk, blk.nk, w.ds_t + r0, R);
      if (grads.dv) transpose_bf16_rows32(w.p_b + r0 * blk.nk, blk.nk, blk.nk, w.p_t + r0, R);
    }
    if (grads.dq) scatter_rows(g, blk, w.out_rows, grads.dq);
    const int64_t row0 = blk.i0 * g.G;  // the block's first stacked row
    const int64_t kv = ((blk.b * g.Hkv + blk.hk) * g.T + blk.ks) * g.D;
    if (grads.dk)  // dK += scale dS^T Q
      amx_gemm_bf16_pairs(blk.nk, g.D, R, g.scale, w.ds_t, R, tp.q->at(g, blk, row0), tp.q->ldp(g),
                          grads.dk + kv, g.D, true);
    if (grads.dv)  // dV += P^T dO
      amx_gemm_bf16_pairs(blk.nk, g.D, R, 1.0f, w.p_t, R, tp.dout->at(g, blk, row0),
                          tp.dout->ldp(g), grads.dv + kv, g.D, true);
    return;
  }
  // P = exp(scale Q K^T - lse) under the mask; dP = dO V^T.
  block_gemm(bf16, R, blk.nk, g.D, g.scale, {qs, g.D, 1}, {keys, 1, g.D}, w.p, blk.nk, false);
  block_gemm(bf16, R, blk.nk, g.D, 1.0f, {dos, g.D, 1}, {values, 1, g.D}, w.dp, blk.nk, false);
  for (int64_t r = 0; r < R; ++r) gradient_row(r);
  if (grads.dq) {  // dQ = scale dS K
    block_gemm(bf16, R, g.D, blk.nk, g.scale, {ds, blk.nk, 1}, {keys, g.D, 1}, w.out_rows, g.D,
               false);
    scatter_rows(g, blk, w.out_rows, grads.dq);
  }
  const int64_t kv = ((blk.b * g.Hkv + blk.hk) * g.T + blk.ks) * g.D;
  if (grads.dk)  // dK += scale dS^T Q
    block_gemm(bf16, blk.nk, g.D, R, g.scale, {ds, 1, blk.nk}, {qs, g.D, 1}, grads.dk + kv, g.D,
               true);
  if (grads.dv)  // dV += P^T dO
    block_gemm(bf16, blk.nk, g.D, R, 1.0f, {p, 1, blk.nk}, {dos, g.D, 1}, grads.dv + kv, g.D, true);
}

// The blocks of one (batch, kv head) group all add into the same dK/dV rows, so a thread takes
// whole groups and runs their blocks in order: the sums, and so the gradients, do not depend on
// the number of threads or on which thread ran what.
void attention_backward(const Geometry& g, const MaskInfo& m, const std::vector<Block>& blocks,
                        const Operand& q, const Operand& k, const Operand& v, const float* out,
                        const float* dout_f32, const Operand& dout, const float* lse, Grads grads) {
  const std::vector<float> delta = row_deltas(g, out, dout_f32);
  const TilePair kt = g.tiles ? TilePair(g, k, true) : TilePair();
  const TilePair vt = g.tiles ? TilePair(g, v, true) : TilePair();
  const TilePair kp = g.tiles && grads.dq ? TilePair(g, k, false) : TilePair();
  const TilePair qp = g.tiles && grads.dk ? TilePair(g, q, false) : TilePair();
  const TilePair dop = g.tiles && grads.dv ? TilePair(g, dout, false) : TilePair();
  const BackwardPairs tp{&kt, &vt, &kp, &qp, &dop};
  const int64_t groups = g.B * g.Hkv;
  const int64_t per_group = static_cast<int64_t>(blocks.size()) / std::max<int64_t>(groups, 1);
#pragma omp parallel if (groups > 1)
  {
    Scratch& w = scratch(g, q.rounded(), true);
#pragma omp for schedule(dynamic, 1)
    for (int64_t gr = 0; gr < groups; ++gr)
      for (int64_t i = gr * per_group; i < (gr + 1) * per_group; ++i)
        backward_block(g, m, blocks[static_cast<size_t>(i)], q, k, v, tp, delta.data(), dout, lse,
                       grads, w);
  }
}

// [B, Hkv, T, D] (the grouped layout of a kv tensor) -> [B, T, Hkv, D].
Tensor ungroup_kv(const Geometry& g, const Tensor& grouped) {
  Tensor t = empty_f32({g.B, g.T, g.Hkv, g.D});
  const float* src = grouped.data_f32();
  float* dst = t.data_f32();
  const int64_t runs = g.B * g.T * g.Hkv;
#pragma omp parallel for schedule(static) if (runs * g.D >= kParallelMinElements)
  for (int64_t i = 0; i < runs; ++i) {
    const int64_t b = i / (g.T * g.Hkv), tt = i / g.Hkv % g.T, hk = i % g.Hkv;
    std::memcpy(dst + i * g.D, src + ((b * g.Hkv + hk) * g.T + tt) * g.D,
                static_cast<size_t>(g.D) * sizeof(float));
  }
  return t;
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
  const bool bf16 = resolve_precision(options.precision) == Precision::BF16;
  g.tiles = bf16 && tiles_fit(g) && amx_tiles_available();
  auto mask = std::make_shared<MaskInfo>(build_mask(g, options.document_ids));
  auto blocks = std::make_shared<std::vector<Block>>(make_blocks(g, *mask));
  // The products' rounded q, k, v: kept for a checkpoint's recompute (which then reads nothing
  // of q, k, v and only records the graph) and for the backward, with bf16 products and
  // options.keep_for_recompute; otherwise made here and again in the backward.
  const bool keep_operands = options.keep_for_recompute && bf16;
  Tensor qg, kg, vg;
  if (keep_operands) {
    qg = keep_for_recompute([&] { return grouped_copy(g, q.data_f32(), g.Hq, true); });
    kg = keep_for_recompute([&] { return grouped_copy(g, k.data_f32(), g.Hkv, true); });
    vg = keep_for_recompute([&] { return grouped_copy(g, v.data_f32(), g.Hkv, true); });
  }
  // The output and the per-row logsumexp; with options.keep_for_recompute a checkpointed
  // block's recompute takes both from its first run instead of running the forward again.
  Tensor lse;
  const auto forward = [&] {
    Tensor o = empty_f32(q.shape());  // every row written (forward_block)
    lse = empty_f32({g.B * g.Hq * g.T});
    if (g.D > 0)
      attention_forward(g, *mask, *blocks,
                        keep_operands ? Operand(qg) : Operand(g, q.data_f32(), g.Hq, bf16),
                        keep_operands ? Operand(kg) : Operand(g, k.data_f32(), g.Hkv, bf16),
                        keep_operands ? Operand(vg) : Operand(g, v.data_f32(), g.Hkv, bf16),
                        o.data_f32(), lse.data_f32());
    return o;
  };
  const Tensor out = options.keep_for_recompute ? keep_for_recompute(forward) : forward();
  if (options.keep_for_recompute) lse = keep_for_recompute([&] { return lse; });

  const bool need_q = q.requires_grad(), need_k = k.requires_grad(), need_v = v.requires_grad();
  return record(out, "attention", {q, k, v}, [=](const Tensor& g_in, const Tensor& o) {
    const Tensor dout = dense(g_in);
    Tensor dq = need_q ? empty_f32(q.shape()) : Tensor();  // every row written by its block
    // dK and dV are summed in the grouped layout, then put back in k's and v's.
    Tensor dk = need_k ? new_f32({g.B, g.Hkv, g.T, g.D}) : Tensor();
    Tensor dv = need_v ? new_f32({g.B, g.Hkv, g.T, g.D}) : Tensor();
    if (g.D > 0)
      attention_backward(
          g, *mask, *blocks, keep_operands ? Operand(qg) : Operand(g, q.data_f32(), g.Hq, bf16),
          keep_operands ? Operand(kg) : Operand(g, k.data_f32(), g.Hkv, bf16),
          keep_operands ? Operand(vg) : Operand(g, v.data_f32(), g.Hkv, bf16), o.data_f32(),
          dout.data_f32(), Operand(g, dout.data_f32(), g.Hq, bf16), lse.data_f32(),
          {need_q ? dq.data_f32() : nullptr, need_k ? dk.data_f32() : nullptr,
           need_v ? dv.data_f32() : nullptr});
    if (need_k) dk = ungroup_kv(g, dk);
    if (need_v) dv = ungroup_kv(g, dv);
    return std::vector<Tensor>{dq, dk, dv};
  });
}

}  // namespace loom
