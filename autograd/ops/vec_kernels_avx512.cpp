// The AVX-512 build of the vector kernels: vec_kernels_impl.h compiled with the AVX-512 flags
// the build gives *_avx512.cpp files, with the e^x-based kernels replaced by hand-written ones
// below. Only reached through vec_kernels(), after the CPU check (AVX-512 with BF16).
//
// The compiled loops spent most of their time outside the polynomial: three compare-and-blends
// for e^x's edges, the 2^n scaling as integer shifts, a division per sigmoid, bf16 rounding
// emulated with integer operations, and a scalar chain of 16 adds ending each reduction. Here
// 2^n is one vscalefps with a zero mask for the lower edge, 1 / (1 + e^-|x|) is a reciprocal
// estimate refined once by Newton's step, bf16 rounding is vcvtneps2bf16, and sums keep a vector
// accumulator. Same exp polynomial and edges as the portable build (0 below -87, +inf above 88,
// NaN for NaN); values agree with it to a few ulp (tests/test_ops.cpp holds them together).
#include <bit>
#include <cstdint>

#include "autograd/ops/vec_kernels.h"
#include "autograd/quant/avx512_util.h"  // <immintrin.h> and the exact bf16 rounding

namespace {
#include "autograd/ops/vec_kernels_impl.h"

using loom::quant::avx512::f32x16_to_bf16;

inline __mmask16 tail_mask(int64_t rem) {
  return static_cast<__mmask16>((1u << rem) - 1u);
}

// e^x of 16 lanes: the portable build's reduction and polynomial (vk_exp), n = round(x log2 e)
// by the same 1.5 * 2^23 trick, then p * 2^n by vscalefps, zeroed below -87 (x = -inf included;
// e^-87 is a normal float, so no result is subnormal) and +inf above 88. A NaN passes through
// (min keeps its second operand's NaN, and the compares keep NaN lanes).
inline __m512 exp16(__m512 x) {
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
  const __m512 t =
      _mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(12582912.0f));
  const __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(12582912.0f));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __mmask16 above_lo = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
  const __m512 y = _mm512_maskz_scalef_ps(above_lo, p, n);
  const __mmask16 above_hi = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.0f), _CMP_GT_OQ);
  return _mm512_mask_mov_ps(y, above_hi, _mm512_set1_ps(std::bit_cast<float>(0x7F800000)));
}

// 1 / (1 + e^-x) as 1 / (1 + e) or e / (1 + e) with e = e^-|x| in (0, 1]: the denominator lies in
// (1, 2], where rcp14 and one Newton step give the reciprocal to ~1 ulp without edge cases.
inline __m512 sigmoid16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), ax));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), e);
  const __m512 r0 = _mm512_rcp14_ps(d);
  const __m512 r = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.0f)));
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mul_ps(r, negative, r, e);
}

// The lanes of m, rounded as f32_to_bf16 (subnormals included).
inline void store_bf16(uint16_t* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, f32x16_to_bf16(v));
}

// The sum of 16 lanes. GCC 12's unmasked shuffles (and _mm512_reduce_add_ps) trip
// -Wuninitialized on the undefined source they pass internally; the zero-masked forms with a
// full mask do not.
inline float hsum(__m512 v) {
  constexpr __mmask16 all = 0xFFFF;
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));  // + the other 256 bits
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));  // + the next 128 bits
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(all, v, 0x4E));
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(all, v, 0xB1));
  return _mm512_cvtss_f32(v);
}

// Runs body(i, mask) over [0, n) in 16-lane steps, the last one masked.
template <class Body>
inline void for16(int64_t n, Body body) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) body(i, static_cast<__mmask16>(0xFFFF));
  if (i < n) body(i, tail_mask(n - i));
}

float x_exp_sum(const float* x, float* y, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    _mm512_mask_storeu_ps(y + i, m, e);
    acc = _mm512_mask_add_ps(acc, m, acc, e);
  });
  return hsum(acc);
}

float x_sum_exp(const float* x, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for16(n, [&](int64_t i, __mmask16 m) {
    acc = _mm512_mask_add_ps(acc, m, acc, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s)));
  });
  return hsum(acc);
}

void x_exp_scale(const float* x, float* y, int64_t n, float shift, float scale) {
  const __m512 s = _mm512_set1_ps(shift), c = _mm512_set1_ps(scale);
  for16(n, [&](int64_t i, __mmask16 m) {
    _mm512_mask_storeu_ps(
        y + i, m, _mm512_mul_ps(exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s)), c));
  });
}

void x_log_softmax_grad(const float* y, const float* g, float* dx, int64_t n, float gsum) {
  const __m512 c = _mm512_set1_ps(gsum);
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 e = exp16(_mm512_maskz_loadu_ps(m, y + i));
    _mm512_mask_storeu_ps(dx + i, m,
                          _mm512_sub_ps(_mm512_maskz_loadu_ps(m, g + i), _mm512_mul_ps(e, c)));
  });
}

float x_exp_sum_bf16(const float* x, uint16_t* y, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    // e^x is never subnormal here (exp16), so vcvtneps2bf16 alone rounds it as f32_to_bf16.
    _mm256_mask_storeu_epi16(y + i, m, (__m256i)_mm512_cvtneps_pbh(e));
    acc = _mm512_mask_add_ps(acc, m, acc, e);
  });
  return hsum(acc);
}

void x_softmax_grad_bf16(const float* s, const float* dp, int64_t n, float lse, float delta,
                         uint16_t* p_out, uint16_t* ds_out) {
  const __m512 l = _mm512_set1_ps(lse), d = _mm512_set1_ps(delta);
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 p = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), l));
    _mm256_mask_storeu_epi16(p_out + i, m, (__m256i)_mm512_cvtneps_pbh(p));
    store_bf16(ds_out + i, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + i), d)), m);
  });
}

void x_silu_fwd(const float* x, float* y, int64_t n) {
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, sigmoid16(v)));
  });
}

// d silu(x) / dx = s + x s (1 - s)
inline __m512 silu_grad16(__m512 x, __m512 s) {
  return _mm512_fmadd_ps(_mm512_mul_ps(x, s), _mm512_sub_ps(_mm512_set1_ps(1.0f), s), s);
}

void x_silu_bwd(const float* x, const float* g, float* dx, int64_t n) {
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(
        dx + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i), silu_grad16(v, sigmoid16(v))));
  });
}

void x_swiglu_fwd(const float* gate, const float* up, float* y, int64_t n) {
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 v = _mm512_maskz_loadu_ps(m, gate + i);
    _mm512_mask_storeu_ps(
        y + i, m, _mm512_mul_ps(_mm512_mul_ps(v, sigmoid16(v)), _mm512_maskz_loadu_ps(m, up + i)));
  });
}

void x_swiglu_bwd(const float* gate, const float* up, const float* g, float* dgate, float* dup,
                  int64_t n) {
  for16(n, [&](int64_t i, __mmask16 m) {
    const __m512 v = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
    const __m512 gi = _mm512_maskz_loadu_ps(m, g + i);
    const __m512 s = sigmoid16(v);
    _mm512_mask_storeu_ps(dgate + i, m, _mm512_mul_ps(_mm512_mul_ps(gi, u), silu_grad16(v, s)));
    _mm512_mask_storeu_ps(dup + i, m, _mm512_mul_ps(_mm512_mul_ps(gi, v), s));
  });
}

}  // namespace

namespace loom::ops_detail {

const VecKernels& vec_kernels_avx512_table() {
  static const VecKernels table = [] {
    VecKernels t = vk_table("avx512");
    t.exp_sum = x_exp_sum;
    t.sum_exp = x_sum_exp;
    t.exp_scale = x_exp_scale;
    t.log_softmax_grad = x_log_softmax_grad;
    t.exp_sum_bf16 = x_exp_sum_bf16;
    t.softmax_grad_bf16 = x_softmax_grad_bf16;
    t.silu_fwd = x_silu_fwd;
    t.silu_bwd = x_silu_bwd;
    t.swiglu_fwd = x_swiglu_fwd;
    t.swiglu_bwd = x_swiglu_bwd;
    return t;
  }();
  return table;
}

}  // namespace loom::ops_detail
