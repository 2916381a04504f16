// The bf16 route of the linear-layer GEMM (CPUs with AVX512_BF16): activations are rounded to
// bf16 once per call (forward) or per tile (input gradient), weights that are not bf16 are
// dequantized a tile of rows at a time into bf16 scratch, and oneDNN's bf16 matmul (on CPUs with
// AMX, for products of 1024 rows or more, loom's tile kernel) accumulates in f32 straight into
// the strided f32 output. A LoRA term is folded into the reduction (its
// activations as more columns, its factor as more weight columns or rows), so a LoRA
// projection writes its output once. Weights reading the same activations (a block's q/k/v,
// gate/up: forward_bf16_group) share one rounding of them and of their terms' activations.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "autograd/kernels/gemm_internal.h"
#include "autograd/kernels/skinny.h"
#include "autograd/kernels/tile_gemm.h"

namespace loom::detail {
namespace {

// Below this many elements of work a step runs on the calling thread.
constexpr int64_t kParallelMin = 1 << 14;

// Share [0, n) of thread t among nt threads.
inline int64_t share_begin(int64_t n, int t, int nt) { return n * t / nt; }

// What one parallel step before a tile's matmul rounds and dequantizes; each thread takes its
// share of every part.
struct Prep {
  // Activations: rows [0, M) of src (width columns, row stride ld_src) rounded into dst (row
  // stride ld_dst); with `tail`, its rows (tail_width columns, row stride ld_tail) rounded into
  // columns [width, width + tail_width) of dst, then tail_pad zeros.
  const float* src = nullptr;
  int64_t M = 0, width = 0, ld_src = 0;
  const float* tail = nullptr;
  int64_t tail_width = 0, tail_pad = 0, ld_tail = 0;
  // With make_F: the tail's first make_cols columns (at make_tail, the tail's writable alias)
  // are made first, src's rows . make_F [width x make_cols], a chunk of rows at a time while
  // they are in cache.
  float* make_tail = nullptr;
  const float* make_F = nullptr;
  int64_t make_cols = 0;
  bf16_t* dst = nullptr;
  int64_t ld_dst = 0;
  // Weight (when tile is non-null): rows [n0, n0 + rows) of W dequantized into tile (row stride
  // ld_tile >= K). Forward: columns [K, ld_tile) of those rows zero but for a low-rank factor
  // times scale, rounded, at columns [K + R_lead, K + R_lead + R) (w_cols = B [N x R]: its rows
  // n0..). Input gradient: R more rows after them (w_rows = A [R x K]), then R_pad zero rows.
  const WeightView* W = nullptr;
  int64_t n0 = 0, rows = 0;
  bf16_t* tile = nullptr;
  int64_t ld_tile = 0;
  const float* w_cols = nullptr;
  int64_t R_lead = 0;
  const float* w_rows = nullptr;
  int64_t R = 0, R_pad = 0;
  float scale = 1.0f;
};

// A folded reduction's length rounded up to whole 64-byte bf16 rows: oneDNN's AMX kernels ran
// the 592-long reduction of a 576-wide projection plus rank 16 at 1.5 ms or, about half the
// calls, 8-13 ms (2048 x 576 outputs); at 608, 0.8-1.5 ms like the plain 576.
int64_t padded_reduction(int64_t n) {
  return (n + 31) / 32 * 32;
}

void round_scaled(const float* src, int64_t n, float scale, bf16_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(scale * src[i]);
}

void prepare(const Prep& p) {
  const int64_t K = p.W ? p.W->cols : 0;
  const int64_t work = p.M * (p.width + p.tail_width) + (p.tile ? (p.rows + p.R) * K : 0);
  const bf16_t zero = 0;
  if (work == 0) return;
  const int threads = work < kParallelMin ? 1 : omp_get_max_threads();
  parallel_run(threads, [&](int t, int nt) {
    const int64_t m0 = share_begin(p.M, t, nt), m1 = share_begin(p.M, t + 1, nt);
    const int64_t chunk = p.make_F ? kSkinnyRowChunk : std::max<int64_t>(m1 - m0, 1);
    for (int64_t c0 = m0; c0 < m1; c0 += chunk) {
      const int64_t c1 = std::min(m1, c0 + chunk);
      if (p.make_F)
        skinny_product_rows_avx512(c0, c1, p.width, p.make_cols, 1.0f, p.src, p.ld_src, p.make_F,
                                   p.make_tail, p.ld_tail);
      for (int64_t m = c0; m < c1; ++m) {
        convert_f32_to_bf16(p.src + m * p.ld_src, p.dst + m * p.ld_dst, p.width);
        if (p.tail) {
          bf16_t* out = p.dst + m * p.ld_dst + p.width;
          convert_f32_to_bf16(p.tail + m * p.ld_tail, out, p.tail_width);
          std::fill_n(out + p.tail_width, p.tail_pad, zero);
        }
      }
    }
    if (!p.tile) return;
    const WeightView& W = *p.W;
    const int64_t r0 = row_share_begin(W, p.rows, t, nt),
                  r1 = row_share_begin(W, p.rows, t + 1, nt);
    if (r1 > r0) {
      // Dequantized as one run from row r0's place (a block may straddle rows), then spread
      // to the row stride from the last row down (each row moves up, never over one not moved).
      bf16_t* part = p.tile + r0 * p.ld_tile;
      dequantize_bf16(W.dtype, W.data, W.rows * K, (p.n0 + r0) * K, (r1 - r0) * K, part);
      if (p.ld_tile != K)
        for (int64_t r = r1 - 1; r > r0; --r)
          std::memmove(p.tile + r * p.ld_tile, part + (r - r0) * K, K * sizeof(bf16_t));
      if (p.ld_tile > K && !p.w_rows)
        for (int64_t r = r0; r < r1; ++r) {
          bf16_t* out = p.tile + r * p.ld_tile + K;
          std::fill_n(out, p.ld_tile - K, zero);
          if (p.w_cols) round_scaled(p.w_cols + (p.n0 + r) * p.R, p.R, p.scale, out + p.R_lead);
        }
    }
    if (p.w_rows) {
      const int64_t rows = p.R + p.R_pad;
      const int64_t j0 = share_begin(rows, t, nt), j1 = share_begin(rows, t + 1, nt);
      for (int64_t j = j0; j < j1; ++j) {
        bf16_t* out = p.tile + (p.rows + j) * p.ld_tile;
        if (j < p.R)
          round_scaled(p.w_rows + j * K, K, p.scale, out);
        else
          std::fill_n(out, K, zero);
      }
    }
  });
}

// Y[m, 0 : cols] (+)= src[m, :] for m in [0, M) (src dense [M x cols]), rows split over the
// threads.
void copy_columns(const float* src, int64_t M, int64_t cols, float* Y, int64_t ldy,
                  bool accumulate) {
  const int threads = M * cols < kParallelMin ? 1 : omp_get_max_threads();
  parallel_run(threads, [&](int t, int nt) {
    const int64_t m0 = share_begin(M, t, nt), m1 = share_begin(M, t + 1, nt);
    store_rows(src + m0 * cols, m1 - m0, cols, Y + m0 * ldy, ldy, accumulate);
  });
}

std::atomic<int64_t> g_tile_products{0};

// Products with fewer rows than this stay on oneDNN: the weight is put in tiles on every call,
// and over the loss's 512-row chunks (LM head tiles of 896 x 576) that cost what the kernel
// saved (per 4-step run: 302 vs 315 ms forward, 346 vs 336 input gradient, oneDNN second).
constexpr int64_t kTileKernelMinRows = 1024;

// Whether C[M x N] = A[M x K] . B runs on loom's AMX tile kernel (tile_gemm.h): the CPU and
// process have the tiles and the shape is whole tiles. In the SmolLM2-135M step (M = 2048, per
// 4-step run) the kernel with its weight conversion against oneDNN 2.6's AMX matmul (which
// repacks the weight on every call too): gate / up forward 1,392 vs 1,115 GFLOP/s, their input
// gradients 1,523 vs 1,238, down's forward 1,474 vs 1,239 and input gradient 1,225 vs 968, k / v
// input gradients 1,398 vs 1,003 (q / o 1,030-1,100 vs 980-1,050). Both sit far below the
// tiles' peak (~2,900 GFLOP/s a core): a 2048 x 1536 f32 C goes out to memory.
bool tile_kernel_fits(int64_t M, int64_t N, int64_t K) {
  return M % 16 == 0 && N % 16 == 0 && K % 32 == 0 && M >= kTileKernelMinRows && N > 0 &&
         amx_tiles_available();
}

// Thread t's share (of nt) of B's 16-column blocks put in tiles, B from the weight tile W (row
// stride ldw) as tile_product says. The kernels themselves, no checks (callers check the
// shape): nothing may throw before a barrier that every thread must reach.
void share_to_tiles(const bf16_t* W, int64_t ldw, int64_t N, int64_t K, bool transposed,
                    bf16_t* tiles, int t, int nt) {
  const int64_t n0 = share_begin(N / 16, t, nt) * 16, n1 = share_begin(N / 16, t + 1, nt) * 16;
  bf16_t* share = tiles + n0 / 16 * (K / 32 * 512);
  if (n1 <= n0) return;
  if (transposed)
    to_tiles_transposed_kernel(W + n0 * ldw, n1 - n0, K, ldw, share);
  else
    to_tiles_kernel(W + n0, K, n1 - n0, ldw, share);
}

// C[M x N] (+)= A[M x K] . B for a bf16 weight tile W (row stride ldw): B = W^T with W [N x K]
// (`transposed`, the forward) or B = W with W [K x N] (the input gradient). On the tile kernel
// where it fits (and A's rows are whole 64-byte lines apart): each thread puts its share of
// B's 16-column blocks in tiles (into the calling thread's scratch slot 3), then, after all
// have, multiplies its share of A's rows by all of B. Elsewhere oneDNN.
void tile_product(int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda, const bf16_t* W,
                  int64_t ldw, bool transposed, float* C, int64_t ldc, bool accumulate) {
  if (!tile_kernel_fits(M, N, K) || lda % 32 != 0) {
    if (transposed) return dnnl_matmul_bf16(M, N, K, A, lda, W, 1, ldw, C, ldc, accumulate);
    return dnnl_matmul_bf16(M, N, K, A, lda, W, ldw, 1, C, ldc, accumulate);
  }
  g_tile_products.fetch_add(1, std::memory_order_relaxed);
  bf16_t* tiles = scratch_bf16(3, K * N);
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  parallel_run(threads, [&](int t, int nt) {
    share_to_tiles(W, ldw, N, K, transposed, tiles, t, nt);
#pragma omp barrier
    const int64_t m0 = share_begin(M / 16, t, nt) * 16, m1 = share_begin(M / 16, t + 1, nt) * 16;
    if (m1 > m0)
      amx_gemm_bf16_tiles_kernel(m1 - m0, N, K, A + m0 * lda, lda, tiles, C + m0 * ldc, ldc,
                                 accumulate);
  });
}

}  // namespace

namespace {

// One weight's part of a forward: Y (+)= xb . [W | tile columns]^T, xb being the rounded
// activations [M x Kx] (row stride Kx). The weight goes a tile of rows at a time; each tile's
// columns past K are zero but for scale * B at [K + R_lead, K + R_lead + R). `first`, when
// given, is rounding still to do: it runs in the first tile's parallel step.
void tiles_forward(const bf16_t* xb, int64_t M, int64_t Kx, const WeightView& W, const float* B,
                   int64_t R, int64_t R_lead, float scale, float* Y, int64_t ldy, bool accumulate,
                   int64_t tile_rows, const Prep* first) {
  const int64_t N = W.rows, K = W.cols;
  // A bf16 W is used in place, still a tile of rows at a time: measured faster than one matmul
  // over a large N (1017 vs 919 GFLOP/s at 576 -> 49152, M = 2048), the same for small N. With
  // a folded reduction it is copied into tiles (its rows need the extra columns).
  const bool direct = W.dtype == DType::BF16 && Kx == K;
  bf16_t* tile = direct ? nullptr : scratch_bf16(1, std::min(tile_rows, N) * Kx);
  const bool dense_out = onednn_uses_amx() && tile_rows < N;
  float* out = dense_out ? scratch_f32(2, M * std::min(tile_rows, N)) : nullptr;
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, N - n0);
    Prep p = n0 == 0 && first ? *first : Prep{};
    if (tile) {
      p.W = &W, p.n0 = n0, p.rows = rows, p.tile = tile, p.ld_tile = Kx;
      if (R > 0) p.w_cols = B, p.R = R, p.R_lead = R_lead, p.scale = scale;
    }
    prepare(p);
    const bf16_t* wt = direct ? static_cast<const bf16_t*>(W.data) + n0 * K : tile;
    // Y[:, n0 : n0+rows] (+)= X . W[n0 : n0+rows, :]^T; the tile [rows x Kx] row-major is read
    // as its transpose [Kx x rows]: strides (1, Kx).
    if (dense_out) {
      // On AMX a tile narrower than Y runs into dense scratch and is copied into Y by all
      // threads: oneDNN's AMX kernels want ldc == N, and the tile kernel's stores into the LM
      // head's rows, 196 KB apart, ran at 753 GFLOP/s against 1,153 into scratch.
      tile_product(M, rows, Kx, xb, Kx, wt, Kx, true, out, rows, false);
      copy_columns(out, M, rows, Y + n0, ldy, accumulate);
    } else {
      tile_product(M, rows, Kx, xb, Kx, wt, Kx, true, Y + n0, ldy, accumulate);
    }
  }
}

// The rounding of [X | U | zeros] into xb (row stride Kx), as a Prep.
Prep round_activations(const float* X, int64_t M, int64_t K, int64_t ldx, const float* U,
                       int64_t ldu, int64_t u_cols, bf16_t* xb, int64_t Kx) {
  Prep p;
  p.src = X, p.M = M, p.width = K, p.ld_src = ldx, p.dst = xb, p.ld_dst = Kx;
  if (u_cols > 0) p.tail = U, p.tail_width = u_cols, p.tail_pad = Kx - K - u_cols, p.ld_tail = ldu;
  return p;
}

}  // namespace

void forward_bf16(const float* X, int64_t M, int64_t ldx, const WeightView& W, float* Y,
                  int64_t ldy, bool accumulate, int64_t tile_rows, const LowRank* lr) {
  const int64_t K = W.cols;
  // A low-rank term rides along the reduction: X's rows get U's R columns, each tile row its
  // row of scale * B, so Y = [X | U] . [W | scale B]^T in one matmul per tile; both padded with
  // zeros to whole 64-byte rows.
  const int64_t R = lr ? lr->rank : 0, Kx = R > 0 ? padded_reduction(K + R) : K;
  bf16_t* xb = scratch_bf16(0, M * Kx);
  // X is rounded together with the first tile's dequantization (one parallel region).
  const Prep round =
      round_activations(X, M, K, ldx, R > 0 ? lr->act : nullptr, R > 0 ? lr->ld_act : 0, R, xb, Kx);
  tiles_forward(xb, M, Kx, W, R > 0 ? lr->factor : nullptr, R, 0, R > 0 ? lr->scale : 1.0f, Y, ldy,
                accumulate, tile_rows, &round);
}

void forward_bf16_group(const float* X, int64_t M, int64_t ldx, const float* U, int64_t ldu,
                        int64_t u_cols, std::span<const GroupProduct> outputs,
                        const MadeColumns& made) {
  if (outputs.empty()) return;
  const int64_t K = outputs.front().W.cols;
  const int64_t Kx = u_cols > 0 ? padded_reduction(K + u_cols) : K;
  bf16_t* xb = scratch_bf16(0, M * Kx);
  Prep round = round_activations(X, M, K, ldx, U, ldu, u_cols, xb, Kx);
  if (made.cols > 0) round.make_tail = made.U, round.make_F = made.F, round.make_cols = made.cols;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const GroupProduct& o = outputs[i];
    tiles_forward(xb, M, Kx, o.W, o.B, o.rank, o.u_col, o.scale, o.Y, o.ldy, false,
                  effective_tile_rows(o.W, 0), i == 0 ? &round : nullptr);
  }
}

bool group_combined_fits(int64_t M, int64_t u_cols, std::span<const GroupProduct> outputs) {
  if (outputs.size() != 2 || M <= 0) return false;
  const int64_t N = outputs[0].W.rows, K = outputs[0].W.cols;
  const int64_t Kx = u_cols > 0 ? padded_reduction(K + u_cols) : K;
  for (const GroupProduct& o : outputs)
    if (o.W.rows != N || o.W.cols != K || effective_tile_rows(o.W, 0) < N) return false;
  return tile_kernel_fits(M, N, Kx);
}

void forward_bf16_group_combined(const float* X, int64_t M, int64_t ldx, const float* U,
                                 int64_t ldu, int64_t u_cols, std::span<const GroupProduct> outputs,
                                 const MadeColumns& made, CombineRows combine, float* Y,
                                 int64_t ldy) {
  const int64_t N = outputs[0].W.rows, K = outputs[0].W.cols;
  const int64_t Kx = u_cols > 0 ? padded_reduction(K + u_cols) : K;
  bf16_t* xb = scratch_bf16(0, M * Kx);
  Prep round = round_activations(X, M, K, ldx, U, ldu, u_cols, xb, Kx);
  if (made.cols > 0) round.make_tail = made.U, round.make_F = made.F, round.make_cols = made.cols;
  // Each weight as tiles_forward's one tile (the first with X's rounding), then in tiles.
  bf16_t* tiles[2] = {scratch_bf16(3, N * Kx), scratch_bf16(4, N * Kx)};
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  for (int i = 0; i < 2; ++i) {
    const GroupProduct& o = outputs[static_cast<size_t>(i)];
    const bool direct = o.W.dtype == DType::BF16 && Kx == K;
    bf16_t* tile = direct ? nullptr : scratch_bf16(1, N * Kx);
    Prep p = i == 0 ? round : Prep{};
    if (tile) {
      p.W = &o.W, p.n0 = 0, p.rows = N, p.tile = tile, p.ld_tile = Kx;
      if (o.rank > 0) p.w_cols = o.B, p.R = o.rank, p.R_lead = o.u_col, p.scale = o.scale;
    }
    prepare(p);
    const bf16_t* wt = direct ? static_cast<const bf16_t*>(o.W.data) : tile;
    parallel_run(threads,
                 [&](int t, int nt) { share_to_tiles(wt, Kx, N, Kx, true, tiles[i], t, nt); });
  }
  g_tile_products.fetch_add(2, std::memory_order_relaxed);
  parallel_run(threads, [&](int t, int nt) {
    const int64_t m0 = share_begin(M / 16, t, nt) * 16, m1 = share_begin(M / 16, t + 1, nt) * 16;
    if (m1 > m0)
      amx_gemm_bf16_tiles_combined_kernel(m1 - m0, N, Kx, xb + m0 * Kx, Kx, tiles[0], tiles[1],
                                          combine, scratch_f32(2, amx_combined_stage_floats(Kx)),
                                          Y + m0 * ldy, ldy);
  });
}

void backward_input_bf16(const float* dY, int64_t M, int64_t lddy, const WeightView& W, float* dX,
                         int64_t lddx, bool accumulate, int64_t tile_rows, const LowRank* lr) {
  const int64_t N = W.rows, K = W.cols;
  const int64_t max_rows = std::min(tile_rows, N);
  // A low-rank term rides along the last tile's reduction: dY's columns get T's R columns, the
  // tile R more rows of scale * A, so dX += [dY | T] . [W ; scale A] in that tile's matmul; both
  // padded with zeros to a reduction of whole 64-byte rows.
  const int64_t R = lr ? lr->rank : 0;
  const int64_t max_width = R > 0 ? padded_reduction(max_rows + R) : max_rows;
  // dY is rounded a tile of columns at a time: an [M x N] bf16 copy of the lm_head gradient
  // would cost M * 49152 * 2 bytes.
  bf16_t* dyb = scratch_bf16(0, M * max_width);
  const bool direct = W.dtype == DType::BF16 && R == 0;
  bf16_t* tile = direct ? nullptr : scratch_bf16(1, max_width * K);
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, N - n0);
    const bool term = R > 0 && n0 + rows == N;
    const int64_t width = term ? padded_reduction(rows + R) : rows;
    Prep p;
    p.src = dY + n0, p.M = M, p.width = rows, p.ld_src = lddy, p.dst = dyb, p.ld_dst = width;
    if (term)
      p.tail = lr->act, p.tail_width = R, p.tail_pad = width - rows - R, p.ld_tail = lr->ld_act;
    if (tile) {
      p.W = &W, p.n0 = n0, p.rows = rows, p.tile = tile, p.ld_tile = K;
      if (term) p.w_rows = lr->factor, p.R = R, p.R_pad = width - rows - R, p.scale = lr->scale;
    }
    prepare(p);
    const bf16_t* wt = direct ? static_cast<const bf16_t*>(W.data) + n0 * K : tile;
    // dX (+)= dY[:, n0 : n0+rows] . W[n0 : n0+rows, :]; the first tile overwrites unless
    // accumulating. The tile is a plain row-major [width x K] matrix: strides (K, 1).
    tile_product(M, K, width, dyb, width, wt, K, false, dX, lddx, n0 > 0 || accumulate);
  }
}

namespace {

// What each chunk of rows rounds while it sits in L2 (backward_input_bf16_lora): [dY | T | 0].
struct LoraRounding {
  const float* dY;
  int64_t lddy, N;
  const float* T;
  int64_t ldt, R, width;
  bf16_t* dyb;
};

void round_lora_rows(void* ctx, int64_t m0, int64_t m1) {
  const LoraRounding& c = *static_cast<const LoraRounding*>(ctx);
  for (int64_t m = m0; m < m1; ++m) {
    bf16_t* row = c.dyb + m * c.width;
    convert_f32_to_bf16(c.dY + m * c.lddy, row, c.N);
    convert_f32_to_bf16(c.T + m * c.ldt, row + c.N, c.R);
    std::fill(row + c.N + c.R, row + c.width, bf16_t{0});
  }
}

}  // namespace

void backward_input_bf16_lora(const float* dY, int64_t M, int64_t lddy, const WeightView& W,
                              const float* A, const float* B, int64_t R, float scale,
                              const float* U, int64_t ldu, float* T, int64_t ldt, float* dB,
                              float* dX, int64_t lddx, bool accumulate, int threads) {
  const int64_t N = W.rows, K = W.cols, width = padded_reduction(N + R);
  bf16_t* dyb = scratch_bf16(0, M * width);
  bf16_t* tile = scratch_bf16(1, width * K);
  // One pass over dY's rows, each thread's share in whole chunks: t's rows, their part of dB,
  // then [dY | T] rounded (what backward_input_bf16's first step would read dY again for).
  std::vector<float> partials(static_cast<size_t>(threads * N * R));
  LoraRounding rounding{dY, lddy, N, T, ldt, R, width, dyb};
  parallel_run(threads, [&](int t, int nt) {
    const int64_t chunks = (M + kSkinnyRowChunk - 1) / kSkinnyRowChunk;
    const int64_t m_begin = std::min(M, chunks * t / nt * kSkinnyRowChunk);
    const int64_t m_end = std::min(M, chunks * (t + 1) / nt * kSkinnyRowChunk);
    skinny_product_reduce_rows_avx512(m_begin, m_end, N, R, dY, lddy, 1.0f, B, T, ldt, U, ldu,
                                      partials.data() + t * N * R, round_lora_rows, &rounding);
  });
  // dB = scale * the partials summed in thread order (as skinny_product_reduce).
  for (int64_t e = 0; e < N * R; ++e) {
    float sum = partials[static_cast<size_t>(e)];
    for (int j = 1; j < threads; ++j) sum += partials[static_cast<size_t>(j * N * R + e)];
    dB[e] = scale * sum;
  }
  // The weight's tile with scale * A's rows after it (backward_input_bf16's one-tile case).
  Prep p;
  p.W = &W, p.n0 = 0, p.rows = N, p.tile = tile, p.ld_tile = K;
  p.w_rows = A, p.R = R, p.R_pad = width - N - R, p.scale = scale;
  prepare(p);
  tile_product(M, K, width, dyb, width, tile, K, false, dX, lddx, accumulate);
}

int64_t tile_kernel_products() {
  return g_tile_products.load(std::memory_order_relaxed);
}

}  // namespace loom::detail
