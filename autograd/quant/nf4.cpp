// NF4 (QLoRA NormalFloat4) quantizer and scalar dequantizer; the layout is documented in nf4.h.
//
// Exact rules (tests/interop/test_quant_vs_gguf.py re-implements them in numpy and compares bytes):
//   absmax_b  = max |x| over block b (64 weights)
//   code(x)   = the index of the NF4 value nearest to v = f32(x / absmax_b) (v = 0 when absmax_b
//               is 0), decided exactly (v against the exact midpoints between neighbouring codes);
//               a v exactly on a midpoint takes the lower index
//   mean      = f32(sum of all absmax_b in double, left to right, / number of blocks)
//   c_b       = f32(absmax_b - mean)
//   dq_scale  = max |c_b| over each group of 256 blocks (f32)
//   absmax_q  = round-half-even(f32(f32(c_b / dq_scale) * 127)) in [-127, 127] (0 if dq_scale 0)
// Codes use the true absmax (as bitsandbytes does); only the stored absmax is double-quantized.
#include "autograd/quant/nf4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "autograd/check.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom {

int64_t nf4_storage_bytes(int64_t n) {
  LOOM_CHECK(n >= 0 && n % kNf4BlockSize == 0,
             "nf4_storage_bytes: element count must be a non-negative multiple of {}, got {}",
             kNf4BlockSize, n);
  const int64_t blocks = n / kNf4BlockSize;
  const int64_t groups = (blocks + kNf4AbsmaxGroup - 1) / kNf4AbsmaxGroup;
  return n / 2 + blocks + 4 * groups + 4;
}

namespace quant {
namespace {

// Midpoints between neighbouring codes, exact in double (the sum of two floats is exact here).
struct Nf4Midpoints {
  double mid[15];
  constexpr Nf4Midpoints() : mid{} {
    for (int i = 0; i < 15; ++i)
      mid[i] = (static_cast<double>(kNf4Codes[i]) + static_cast<double>(kNf4Codes[i + 1])) / 2.0;
  }
};
constexpr Nf4Midpoints kMid;

// Number of midpoints strictly below v = the nearest code index (ties to the lower index).
// Branchless binary search: the comparisons are data-dependent coin flips for real weights.
uint8_t nearest_nf4_code(float v) {
  const double x = v;
  int idx = 0;
  for (int step = 8; step > 0; step /= 2)
    idx += step & -static_cast<int>(x > kMid.mid[idx + step - 1]);
  return static_cast<uint8_t>(idx);
}

}  // namespace

Nf4Layout nf4_layout(const uint8_t* data, int64_t n_total) {
  const int64_t blocks = n_total / kNf4BlockSize;
  const int64_t groups = (blocks + kNf4AbsmaxGroup - 1) / kNf4AbsmaxGroup;
  Nf4Layout layout;
  layout.codes = data;
  layout.absmax_q = reinterpret_cast<const int8_t*>(data + n_total / 2);
  layout.dq_scale = data + n_total / 2 + blocks;
  std::memcpy(&layout.absmax_mean, layout.dq_scale + 4 * groups, sizeof(float));
  return layout;
}

float nf4_block_absmax(const Nf4Layout& layout, int64_t block) {
  float scale;
  std::memcpy(&scale, layout.dq_scale + 4 * (block / kNf4AbsmaxGroup), sizeof scale);
  return static_cast<float>(layout.absmax_q[block]) * scale / 127.0f + layout.absmax_mean;
}

void quantize_nf4(const float* x, int64_t n, uint8_t* out) {
  const int64_t blocks = n / kNf4BlockSize;
  const int64_t groups = (blocks + kNf4AbsmaxGroup - 1) / kNf4AbsmaxGroup;
  uint8_t* codes = out;
  auto* absmax_q = reinterpret_cast<int8_t*>(out + n / 2);
  uint8_t* dq_scale = out + n / 2 + blocks;
  uint8_t* mean_at = dq_scale + 4 * groups;

  std::vector<float> absmax(static_cast<size_t>(blocks));
  // Blocks are independent; the absmax sum below stays sequential so the bytes do not depend on
  // the thread count.
#pragma omp parallel for schedule(static) if (blocks >= 1024)
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kNf4BlockSize;
    float amax = 0.0f;
    // x is finite, so a plain comparison is fmax (which GCC would call in libm per element).
    for (int64_t i = 0; i < kNf4BlockSize; ++i) {
      const float a = std::fabs(xb[i]);
      amax = a > amax ? a : amax;
    }
    absmax[static_cast<size_t>(b)] = amax;
    for (int64_t i = 0; i < kNf4BlockSize; i += 2) {
      const uint8_t hi = nearest_nf4_code(amax > 0.0f ? xb[i] / amax : 0.0f);
      const uint8_t lo = nearest_nf4_code(amax > 0.0f ? xb[i + 1] / amax : 0.0f);
      codes[(b * kNf4BlockSize + i) / 2] = static_cast<uint8_t>((hi << 4) | lo);
    }
  }
  double sum = 0.0;
  for (int64_t b = 0; b < blocks; ++b) sum += absmax[static_cast<size_t>(b)];

  const float mean = blocks > 0 ? static_cast<float>(sum / static_cast<double>(blocks)) : 0.0f;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b0 = g * kNf4AbsmaxGroup;
    const int64_t b1 = std::min(blocks, b0 + kNf4AbsmaxGroup);
    float scale = 0.0f;
    for (int64_t b = b0; b < b1; ++b)
      scale = std::fmax(scale, std::fabs(absmax[static_cast<size_t>(b)] - mean));
    for (int64_t b = b0; b < b1; ++b) {
      const float centered = absmax[static_cast<size_t>(b)] - mean;
      float q = scale > 0.0f ? std::nearbyint((centered / scale) * 127.0f) : 0.0f;
      q = std::fmin(127.0f, std::fmax(-127.0f, q));
      absmax_q[b] = static_cast<int8_t>(q);
    }
    std::memcpy(dq_scale + 4 * g, &scale, sizeof scale);
  }
  std::memcpy(mean_at, &mean, sizeof mean);
}

void dequant_nf4_ref(const uint8_t* data, int64_t n_total, int64_t first, int64_t count,
                     float* out) {
  const Nf4Layout layout = nf4_layout(data, n_total);
  for (int64_t b = first / kNf4BlockSize; b < (first + count) / kNf4BlockSize; ++b) {
    const float absmax = nf4_block_absmax(layout, b);
    const uint8_t* codes = layout.codes + b * kNf4BlockSize / 2;
    for (int64_t i = 0; i < kNf4BlockSize / 2; ++i) {
      out[2 * i] = kNf4Codes[codes[i] >> 4] * absmax;
      out[2 * i + 1] = kNf4Codes[codes[i] & 0x0F] * absmax;
    }
    out += kNf4BlockSize;
  }
}

}  // namespace quant
}  // namespace loom
