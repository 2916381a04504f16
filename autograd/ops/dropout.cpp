// Dropout with a counter-based mask: element i is kept when a 24-bit uniform made by hashing
// (seed, i) is at least p (vec_kernels.h has the hash). No mask is stored: backward (and a
// checkpoint recompute) regenerate it from (seed, index), so the same seed always gives the
// same mask, whatever the thread count.
#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"

namespace loom {

using namespace ops_detail;

namespace {

// y[i] = x[i] * keep(i) * factor over n elements, one contiguous range per thread.
void apply_mask(const float* x, float* y, int64_t n, uint32_t key, uint32_t threshold, float factor) {
  const VecKernels& vk = vec_kernels();
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    vk.dropout(x + b, y + b, e - b, static_cast<uint32_t>(b), key, threshold, factor);
  });
}

}  // namespace

bool dropout_keeps(uint64_t seed, int64_t index, float p) {
  return dropout_keep(static_cast<uint32_t>(index), dropout_hash_key(seed), dropout_threshold(p));
}

Tensor dropout(const Tensor& x_in, float p, uint64_t seed) {
  check_f32("dropout", "x", x_in);
  LOOM_CHECK(p >= 0.0f && p < 1.0f, "dropout: p must be in [0, 1), got {}", p);
  LOOM_CHECK(x_in.numel() <= int64_t{UINT32_MAX}, "dropout: {} elements exceed the 2^32 mask indices",
             x_in.numel());
  if (p == 0.0f) return x_in;
  const Tensor x = contiguous(x_in);
  const float factor = 1.0f / (1.0f - p);
  const uint32_t key = dropout_hash_key(seed), threshold = dropout_threshold(p);
  Tensor y = empty_f32(x.shape());
  apply_mask(x.data_f32(), y.data_f32(), x.numel(), key, threshold, factor);
  return record(y, "dropout", {x}, [key, threshold, factor](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    Tensor dx = empty_f32(g.shape());
    apply_mask(g.data_f32(), dx.data_f32(), g.numel(), key, threshold, factor);
    return std::vector<Tensor>{dx};
  });
}

}  // namespace loom
