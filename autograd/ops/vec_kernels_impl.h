// Bodies of the vector kernels (see vec_kernels.h), written so GCC vectorizes every loop. This
// header is included inside an anonymous namespace by exactly three files, vec_kernels.cpp,
// vec_kernels_avx2.cpp and vec_kernels_avx512.cpp, which compile it with different instruction
// sets; everything here must keep internal linkage (no std:: templates that could be emitted out
// of line and merged across the builds), so min/max/select are spelled out.
//
// The including file includes <bit>, <cstdint> and vec_kernels.h first (this file includes
// nothing, since it is read inside a namespace).
#pragma once

// Branch-free e^x (Cephes expf polynomial on r = x - n ln2, |r| <= ln2/2; n rounded with the
// 1.5 * 2^23 trick, since floor/round calls block vectorization).
static inline float vk_exp(float x) {
  const float lo = -87.0f, hi = 88.0f;
  float xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  const int32_t ni = std::bit_cast<int32_t>(t) - 0x4B400000;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float y = p * std::bit_cast<float>((ni + 127) << 23);
  const float inf = std::bit_cast<float>(0x7F800000);
  const float big = x > hi ? inf : y;
  const float out = x < lo ? 0.0f : big;
  return x != x ? x : out;  // NaN in, NaN out
}

static inline float vk_sigmoid(float x) { return 1.0f / (1.0f + vk_exp(-x)); }

static float vk_max(const float* x, int64_t n) {
  float m = -std::bit_cast<float>(0x7F800000);
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

static float vk_exp_sum(const float* x, float* y, int64_t n, float shift) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float e = vk_exp(x[i] - shift);
    y[i] = e;
    s += e;
  }
  return s;
}

static float vk_sum_exp(const float* x, int64_t n, float shift) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += vk_exp(x[i] - shift);
  return s;
}

static void vk_exp_scale(const float* x, float* y, int64_t n, float shift, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = vk_exp(x[i] - shift) * scale;
}

static void vk_scale(float* x, int64_t n, float s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

static float vk_dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

static void vk_mask_docs(float* s, const int32_t* docs, int32_t doc, int64_t n) {
  const float ninf = -std::bit_cast<float>(0x7F800000);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = s[i];
    s[i] = docs[i] == doc ? v : ninf;
  }
}

static void vk_softmax_grad(const float* p, float* dp, int64_t n, float delta) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dp[i] = p[i] * (dp[i] - delta);
}

// f32 -> bf16 bits, round to nearest even, NaN kept quiet (as loom::f32_to_bf16).
static inline uint16_t vk_bf16(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

static float vk_exp_sum_bf16(const float* x, uint16_t* y, int64_t n, float shift) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float e = vk_exp(x[i] - shift);
    y[i] = vk_bf16(e);
    s += e;
  }
  return s;
}

static void vk_softmax_grad_bf16(const float* s, const float* dp, int64_t n, float lse, float delta,
                                 uint16_t* p_out, uint16_t* ds_out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float p = vk_exp(s[i] - lse);
    p_out[i] = vk_bf16(p);
    ds_out[i] = vk_bf16(p * (dp[i] - delta));
  }
}

static void vk_log_softmax_grad(const float* y, const float* g, float* dx, int64_t n, float gsum) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = g[i] - vk_exp(y[i]) * gsum;
}

static void vk_silu_fwd(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * vk_sigmoid(x[i]);
}

static void vk_silu_bwd(const float* x, const float* g, float* dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float s = vk_sigmoid(x[i]);
    dx[i] = g[i] * (s + x[i] * s * (1.0f - s));
  }
}

static void vk_swiglu_fwd(const float* gate, const float* up, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = gate[i] * vk_sigmoid(gate[i]) * up[i];
}

static void vk_swiglu_bwd(const float* gate, const float* up, const float* g, float* dgate,
                          float* dup, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float s = vk_sigmoid(gate[i]);
    dgate[i] = g[i] * up[i] * (s + gate[i] * s * (1.0f - s));
    dup[i] = g[i] * gate[i] * s;
  }
}

static float vk_sum_squares(const float* x, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

static float vk_dot3(const float* a, const float* b, const float* c, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i] * c[i];
  return s;
}

static void vk_rmsnorm_fwd(const float* x, const float* w, float r, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * r * w[i];
}

static void vk_rmsnorm_bwd(const float* g, const float* w, const float* x, float r, float c,
                           float* dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = r * (g[i] * w[i] - x[i] * c);
}

static void vk_rmsnorm_dw(const float* g, const float* x, float r, float* acc, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += g[i] * x[i] * r;
}

// A bijective 32-bit integer hash (Wellons' "lowbias32"): 32-bit multiplies vectorize widely.
static inline uint32_t vk_hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

static inline bool vk_dropout_keep(uint32_t index, uint32_t key, uint32_t threshold) {
  return (vk_hash32(index * 0x9E3779B9u + key) >> 8) >= threshold;
}

static void vk_dropout(const float* x, float* y, int64_t n, uint32_t first, uint32_t key,
                       uint32_t threshold, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    y[i] = vk_dropout_keep(first + static_cast<uint32_t>(i), key, threshold) ? x[i] * scale : 0.0f;
}

static loom::ops_detail::VecKernels vk_table(const char* name) {
  return loom::ops_detail::VecKernels{vk_max,
                                      vk_exp_sum,
                                      vk_sum_exp,
                                      vk_exp_scale,
                                      vk_scale,
                                      vk_dot,
                                      vk_mask_docs,
                                      vk_softmax_grad,
                                      vk_log_softmax_grad,
                                      vk_exp_sum_bf16,
                                      vk_softmax_grad_bf16,
                                      vk_silu_fwd,
                                      vk_silu_bwd,
                                      vk_swiglu_fwd,
                                      vk_swiglu_bwd,
                                      vk_sum_squares,
                                      vk_dot3,
                                      vk_rmsnorm_fwd,
                                      vk_rmsnorm_bwd,
                                      vk_rmsnorm_dw,
                                      vk_dropout,
                                      name};
}
