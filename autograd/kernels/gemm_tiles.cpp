// Weight tiles for the GEMM routes: tile height, row-range dequantization split over the OpenMP
// threads, and the thread-local scratch buffers the tiles live in (reused, never a whole W).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <oneapi/dnnl/dnnl.hpp>

#include "autograd/check.h"
#include "autograd/kernels/gemm_internal.h"

namespace loom::detail {

int64_t row_granularity(const WeightView& W) {
  const int64_t block = dtype_info(W.dtype).block_elems;
  return block / std::gcd(std::max<int64_t>(W.cols, 1), block);
}

void store_rows(const float* src, int64_t rows, int64_t cols, float* dst, int64_t ld,
                bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = src + r * cols;
    float* out = dst + r * ld;
    if (accumulate)
      for (int64_t c = 0; c < cols; ++c) out[c] += in[c];
    else
      std::memcpy(out, in, static_cast<size_t>(cols) * sizeof(float));
  }
}

bool onednn_uses_amx() {
  static const bool amx = [] {
    try {
      const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
      return isa == dnnl::cpu_isa::avx512_core_amx;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return amx;
}

int64_t default_tile_rows(const WeightView& W) {
  // On CPUs with AMX, oneDNN runs its AMX kernels only when the output is dense (ldc == N;
  // gemm_dnnl.cpp): a tile narrower than Y fell back to gemm:jit (SmolLM2-135M's gate / up
  // projections in tiles of 896 + 640 rows: ~720 GFLOP/s in the step, against ~1,300 for the
  // whole 1536 rows at once). A weight of up to 2^21 elements (4 MiB as bf16) is then one tile.
  if (onednn_uses_amx() && W.rows * W.cols <= (int64_t{1} << 21))
    return std::max<int64_t>(W.rows, 1);
  // About 2^19 elements per tile (1 MiB as bf16): fits the 2 MiB L2 of a Zen 5 core with the
  // GEMM's packed panels, and is large enough for oneDNN / OpenBLAS to run near peak (measured
  // at K=576, M=2048: 256..1024-row tiles all within 5% of the untiled product).
  const int64_t rows = std::max<int64_t>(64, (int64_t{1} << 19) / std::max<int64_t>(W.cols, 1) / 16 * 16);
  return std::min(rows, std::max<int64_t>(W.rows, 1));
}

bool row_kernel_fits(const WeightView& W) {
  return W.cols % dtype_info(W.dtype).block_elems == 0 && gemv_rows_available(W.dtype);
}

int64_t effective_tile_rows(const WeightView& W, int64_t tile_rows) {
  if (tile_rows == 0) tile_rows = default_tile_rows(W);
  const int64_t g = row_granularity(W);
  return (tile_rows + g - 1) / g * g;
}

int64_t row_share_begin(const WeightView& W, int64_t rows, int t, int threads) {
  const int64_t g = row_granularity(W), units = (rows + g - 1) / g;
  return std::min(rows, units * t / threads * g);
}

namespace {

template <typename T, typename Fn>
void split_rows(const WeightView& W, int64_t row0, int64_t rows, T* out, Fn dequant_range) {
  const int64_t K = W.cols, n_total = W.rows * W.cols;
  const int threads = rows * K < kParallelDequantMin ? 1 : omp_get_max_threads();
  if (threads <= 1) {
    dequant_range(W.dtype, W.data, n_total, row0 * K, rows * K, out);
    return;
  }
  parallel_run(threads, [&](int t, int nt) {
    const int64_t begin = row_share_begin(W, rows, t, nt);
    const int64_t end = row_share_begin(W, rows, t + 1, nt);
    if (end > begin)
      dequant_range(W.dtype, W.data, n_total, (row0 + begin) * K, (end - begin) * K,
                    out + begin * K);
  });
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// A growable, 64-byte aligned buffer (oneDNN and the AVX-512 dequantizers like aligned rows).
struct AlignedBuffer {
  std::unique_ptr<void, FreeDeleter> data;
  size_t bytes = 0;

  void* get(size_t need) {
    if (need > bytes) {
      const size_t rounded = (need + 4095) / 4096 * 4096;
      void* p = std::aligned_alloc(64, rounded);
      LOOM_CHECK(p != nullptr, "gemm scratch: could not allocate {} bytes", rounded);
      data.reset(p);
      bytes = rounded;
    }
    return data.get();
  }
};

constexpr int kScratchSlots = 5;
thread_local AlignedBuffer t_scratch[kScratchSlots];

void* scratch_bytes(int slot, size_t bytes) {
  LOOM_CHECK(slot >= 0 && slot < kScratchSlots, "gemm scratch: slot {} outside [0, {})", slot,
             kScratchSlots);
  return t_scratch[slot].get(bytes);
}

}  // namespace

void dequantize_rows_f32(const WeightView& W, int64_t row0, int64_t rows, float* out) {
  split_rows(W, row0, rows, out,
             [](DType t, const void* d, int64_t n, int64_t first, int64_t count, float* o) {
               dequantize(t, d, n, first, count, o);
             });
}

void dequantize_rows_bf16(const WeightView& W, int64_t row0, int64_t rows, bf16_t* out) {
  split_rows(W, row0, rows, out,
             [](DType t, const void* d, int64_t n, int64_t first, int64_t count, bf16_t* o) {
               dequantize_bf16(t, d, n, first, count, o);
             });
}

float* scratch_f32(int slot, int64_t count) {
  return static_cast<float*>(scratch_bytes(slot, static_cast<size_t>(count) * sizeof(float)));
}

bf16_t* scratch_bf16(int slot, int64_t count) {
  return static_cast<bf16_t*>(scratch_bytes(slot, static_cast<size_t>(count) * sizeof(bf16_t)));
}

}  // namespace loom::detail
