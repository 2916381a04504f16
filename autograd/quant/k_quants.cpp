// GGUF K-quants Q4_K and Q6_K: 256-weight super-blocks with quantized per-sub-block scales.
//
// Dequantization is the GGUF definition (see ggml_blocks.h for the formulas and layouts).
//
// Quantization follows the search of ggml's reference quantizers (quantize_row_q4_K_ref /
// quantize_row_q6_K_ref, no importance matrix), written afresh:
//   Q4_K: each 32-weight sub-block gets an affine fit x ~ scale * q - min, q in 0..15, by trying 21
//         grid stretches (nmax - 1 + 0.1 k) / (max - min) and solving weighted least squares for
//         (scale, min) on each candidate rounding; weights av|x| + |x|. The 8 scales and 8 mins are
//         then quantized to 6 bits against the super-block's largest (d = max_scale / 63,
//         dmin = max_min / 63) and every weight is re-rounded with the scale it will actually get.
//   Q6_K: each 16-weight sub-block gets a symmetric fit (q in -32..31, weights x^2, 19 stretches
//         around 32 / max), the 16 scales become int8 against the largest (d = max_scale / -128),
//         and every weight is re-rounded with its final scale.
// Byte parity with llama.cpp is not a goal here (gguf-py cannot quantize K-quants to check
// against); the round-trip error is tested and our bytes are decoded by gguf-py in the interop
// test.
#include <cmath>
#include <cstring>

#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/quant_kernels.h"

// Last: applies to the code below only (see the header).
#include "autograd/quant/fp_contract_off.h"

namespace loom::quant {
namespace {

// Round half to even without a libm call (baseline x86-64 has no roundss): adding 1.5 * 2^23
// leaves the rounded integer in the low mantissa bits, exact for |v| < 2^22 (ggml does the same).
// Out-of-range values and NaN saturate; callers clamp to their level range anyway.
int nearest_int(float v) {
  if (!(std::fabs(v) < 4194304.0f)) return v > 0 ? 4194304 : -4194304;
  const float shifted = v + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &shifted, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

int clamp_int(int v, int lo, int hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Weighted affine fit of n values to scale * l - min_out, l in [0, nmax]. Writes the levels to L,
// returns the scale and the (non-negative) min through min_out.
float fit_affine(int n, int nmax, const float* x, const float* w, uint8_t* L, float* min_out,
                 float rmin, float rdelta, int nstep) {
  float lo = x[0], hi = x[0];
  float sum_w = 0.0f, sum_x = 0.0f;
  for (int i = 0; i < n; ++i) {
    lo = std::fmin(lo, x[i]);
    hi = std::fmax(hi, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0.0f) lo = 0.0f;  // the min is only ever subtracted: a positive block keeps zero
  if (hi == lo) {
    std::memset(L, 0, static_cast<size_t>(n));
    *min_out = -lo;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (hi - lo);
  float scale = 1.0f / iscale;
  float best_error = 0.0f;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<uint8_t>(clamp_int(nearest_int(iscale * (x[i] - lo)), 0, nmax));
    const float diff = scale * L[i] + lo - x[i];
    best_error += w[i] * diff * diff;
  }
  uint8_t cand[32];
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * static_cast<float>(step) + static_cast<float>(nmax)) / (hi - lo);
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clamp_int(nearest_int(iscale * (x[i] - lo)), 0, nmax);
      cand[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0.0f)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0.0f) {
      this_min = 0.0f;
      this_scale = sum_xl / sum_l2;
    }
    float error = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float diff = this_scale * cand[i] + this_min - x[i];
      error += w[i] * diff * diff;
    }
    if (error < best_error) {
      std::memcpy(L, cand, static_cast<size_t>(n));
      best_error = error;
      scale = this_scale;
      lo = this_min;
    }
  }
  *min_out = -lo;
  return scale;
}

// Symmetric fit of n values to scale * l, l in [-nmax, nmax - 1], weights x^2. Writes l + nmax to
// L and returns the scale (its sign maps the largest-magnitude value to -nmax).
float fit_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0.0f, signed_max = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      signed_max = x[i];
    }
  }
  if (amax < 1e-15f) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  auto sums = [&](float iscale, float& sumlx, float& suml2) {
    sumlx = suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
  };
  auto levels = [&](float iscale) {
    for (int i = 0; i < n; ++i)
      L[i] = static_cast<int8_t>(clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1) + nmax);
  };
  float iscale = -static_cast<float>(nmax) / signed_max;
  float sumlx, suml2;
  sums(iscale, sumlx, suml2);
  levels(iscale);
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int k = -9; k <= 9; ++k) {
    if (k == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(k)) / signed_max;
    sums(iscale, sumlx, suml2);
    if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
      levels(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

}  // namespace

void quantize_q4_k(const float* x, int64_t nblocks, uint8_t* out) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQkK) {
    uint8_t L[kQkK];
    float scales[8], mins[8], w[32];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
      const float* xs = x + 32 * j;
      float sum_x2 = 0.0f;
      for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
      const float av_x = std::sqrt(sum_x2 / 32.0f);
      for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
      scales[j] = fit_affine(32, 15, xs, w, L + 32 * j, &mins[j], -1.0f, 0.1f, 20);
      max_scale = std::fmax(max_scale, scales[j]);
      max_min = std::fmax(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    BlockQ4_K blk;
    std::memset(&blk, 0, sizeof blk);
    for (int j = 0; j < 8; ++j) {
      const auto ls = static_cast<uint8_t>(clamp_int(nearest_int(inv_scale * scales[j]), 0, 63));
      const auto lm = static_cast<uint8_t>(clamp_int(nearest_int(inv_min * mins[j]), 0, 63));
      if (j < 4) {
        blk.scales[j] = ls;
        blk.scales[j + 4] = lm;
      } else {
        blk.scales[j + 4] = static_cast<uint8_t>((ls & 0x0F) | ((lm & 0x0F) << 4));
        blk.scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
        blk.scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
      }
    }
    blk.d = f32_to_f16(max_scale / 63.0f);
    blk.dmin = f32_to_f16(max_min / 63.0f);
    const float d = f16_to_f32(blk.d);
    const float dmin = f16_to_f32(blk.dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      k4_scale_min(blk.scales, j, sc, m);
      const float dj = d * sc;
      const float mj = dmin * m;
      for (int l = 0; l < 32; ++l) {
        // A zero scale decodes every level to -mj; level 0 keeps the bytes deterministic.
        L[32 * j + l] =
            dj != 0.0f
                ? static_cast<uint8_t>(clamp_int(nearest_int((x[32 * j + l] + mj) / dj), 0, 15))
                : 0;
      }
    }
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l)
        blk.qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    std::memcpy(out + b * sizeof blk, &blk, sizeof blk);
  }
}

void quantize_q6_k(const float* x, int64_t nblocks, uint8_t* out) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQkK) {
    int8_t L[kQkK];
    float scales[16];
    float max_scale = 0.0f, max_abs_scale = 0.0f;
    for (int s = 0; s < 16; ++s) {
      scales[s] = fit_symmetric(16, 32, x + 16 * s, L + 16 * s);
      if (std::fabs(scales[s]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[s]);
        max_scale = scales[s];
      }
    }
    BlockQ6_K blk;
    std::memset(&blk, 0, sizeof blk);
    if (max_abs_scale >= 1e-15f) {
      const float iscale = -128.0f / max_scale;
      blk.d = f32_to_f16(1.0f / iscale);
      for (int s = 0; s < 16; ++s)
        blk.scales[s] = static_cast<int8_t>(clamp_int(nearest_int(iscale * scales[s]), -128, 127));
      const float d = f16_to_f32(blk.d);
      for (int s = 0; s < 16; ++s) {
        const float ds = d * blk.scales[s];
        for (int l = 0; l < 16; ++l) {
          L[16 * s + l] =
              ds != 0.0f
                  ? static_cast<int8_t>(clamp_int(nearest_int(x[16 * s + l] / ds), -32, 31) + 32)
                  : 32;
        }
      }
      for (int h = 0; h < 2; ++h) {  // two halves of 128: ql 64 bytes, qh 32 bytes each
        const int8_t* Lh = L + 128 * h;
        uint8_t* ql = blk.ql + 64 * h;
        uint8_t* qh = blk.qh + 32 * h;
        for (int l = 0; l < 32; ++l) {
          const int q1 = Lh[l], q2 = Lh[l + 32], q3 = Lh[l + 64], q4 = Lh[l + 96];
          ql[l] = static_cast<uint8_t>((q1 & 0x0F) | ((q3 & 0x0F) << 4));
          ql[l + 32] = static_cast<uint8_t>((q2 & 0x0F) | ((q4 & 0x0F) << 4));
          qh[l] = static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) |
                                       ((q4 >> 4) << 6));
        }
      }
    }
    std::memcpy(out + b * sizeof blk, &blk, sizeof blk);
  }
}

void dequant_q4_k_ref(const uint8_t* blocks, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQkK) {
    BlockQ4_K blk;
    std::memcpy(&blk, blocks + b * sizeof blk, sizeof blk);
    const float d = f16_to_f32(blk.d);
    const float dmin = f16_to_f32(blk.dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      k4_scale_min(blk.scales, j, sc, m);
      const float dj = d * sc;
      const float mj = dmin * m;
      const uint8_t* q = blk.qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);  // even sub-blocks in the low nibbles, odd in the high
      for (int l = 0; l < 32; ++l)
        out[32 * j + l] = static_cast<float>((q[l] >> shift) & 0x0F) * dj - mj;
    }
  }
}

void dequant_q6_k_ref(const uint8_t* blocks, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b, out += kQkK) {
    BlockQ6_K blk;
    std::memcpy(&blk, blocks + b * sizeof blk, sizeof blk);
    const float d = f16_to_f32(blk.d);
    for (int i = 0; i < kQkK; ++i) {
      // Element i: half h = i / 128, quarter r = (i % 128) / 32, lane l = i % 32.
      const int h = i / 128, r = (i % 128) / 32, l = i % 32;
      const uint8_t lo_byte = blk.ql[64 * h + 32 * (r & 1) + l];
      const int lo = (r < 2) ? (lo_byte & 0x0F) : (lo_byte >> 4);
      const int hi = (blk.qh[32 * h + l] >> (2 * r)) & 3;
      const float ds = d * blk.scales[i / 16];
      out[i] = static_cast<float>((lo | (hi << 4)) - 32) * ds;
    }
  }
}

}  // namespace loom::quant
