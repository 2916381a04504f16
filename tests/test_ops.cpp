// Forward values of the ops in autograd/ops.h against plain reference loops written here (in
// double), and the error messages for bad arguments (each names the op). Gradients are checked
// in test_gradcheck.cpp.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <numbers>
#include <random>
#include <string>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/kernels/tile_gemm.h"
#include "autograd/ops.h"
#include "autograd/ops/vec_kernels.h"
#include "autograd/quant/quant.h"
#include "autograd/tape.h"

namespace loom {
namespace {

std::vector<float> random_values(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

Tensor random_tensor(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  return Tensor::from_vector(shape, random_values(shape_numel(shape), seed, lo, hi));
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double atol,
                  double rtol, const std::string& what = "") {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], atol + rtol * std::abs(want[i])) << what << " element " << i;
}

// Expects fn to throw loom::Error whose message starts with fragments[0] (the op's name) and
// contains every other fragment.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(fragments.at(0), 0), 0u) << "does not start with '" << fragments[0] << "': " << msg;
    for (const std::string& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no loom::Error thrown";
}

// ---- elementwise, reductions, softmax -----------------------------------------------------------

TEST(Ops, AddSubMulBroadcastMatchLoops) {
  Tensor a = random_tensor({2, 3, 4}, 1), b = random_tensor({3, 1}, 2);
  const auto va = a.to_vector(), vb = b.to_vector();
  std::vector<double> add_ref, sub_ref, mul_ref;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) {
        const double x = va[(i * 3 + j) * 4 + k], y = vb[j];
        add_ref.push_back(x + y);
        sub_ref.push_back(x - y);
        mul_ref.push_back(x * y);
      }
  expect_close(add(a, b).to_vector(), add_ref, 1e-6, 0);
  expect_close(sub(a, b).to_vector(), sub_ref, 1e-6, 0);
  expect_close(mul(a, b).to_vector(), mul_ref, 1e-6, 0);
  EXPECT_EQ(add(b, a).shape(), (Shape{2, 3, 4}));
  // Same shape, large enough for the parallel path, on a transposed view.
  Tensor big = random_tensor({300, 200}, 3), other = random_tensor({200, 300}, 4);
  const auto vbig = big.to_vector(), vo = other.to_vector();
  std::vector<double> ref(vbig.size());
  for (int64_t i = 0; i < 300; ++i)
    for (int64_t j = 0; j < 200; ++j) ref[i * 200 + j] = vbig[i * 200 + j] * vo[j * 300 + i];
  expect_close(mul(big, transpose(other, 0, 1)).to_vector(), ref, 1e-6, 0);
}

TEST(Ops, ScaleSumMean) {
  Tensor x = random_tensor({5, 7}, 1);
  const auto v = x.to_vector();
  double s = 0;
  for (float e : v) s += e;
  EXPECT_EQ(sum(x).shape(), Shape{});
  EXPECT_NEAR(sum(x).item(), s, 1e-5);
  EXPECT_NEAR(mean(x).item(), s / 35, 1e-6);
  const auto sc = scale(x, -0.5f).to_vector();
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(sc[i], -0.5f * v[i]);
}

TEST(Ops, SoftmaxAndLogSoftmaxMatchLoops) {
  Tensor x = random_tensor({4, 300}, 1, -20, 20);
  const auto v = x.to_vector();
  std::vector<double> sm, lsm;
  for (int r = 0; r < 4; ++r) {
    double m = -1e300, z = 0;
    for (int j = 0; j < 300; ++j) m = std::max(m, static_cast<double>(v[r * 300 + j]));
    for (int j = 0; j < 300; ++j) z += std::exp(v[r * 300 + j] - m);
    for (int j = 0; j < 300; ++j) {
      sm.push_back(std::exp(v[r * 300 + j] - m) / z);
      lsm.push_back(v[r * 300 + j] - m - std::log(z));
    }
  }
  expect_close(softmax(x).to_vector(), sm, 1e-7, 1e-5);
  expect_close(log_softmax(x).to_vector(), lsm, 1e-5, 1e-6);
}

TEST(Ops, VecExpMatchesStdExp) {
  using ops_detail::vec_exp_reference;
  for (double x = -87.0; x <= 88.0; x += 0.01) {
    const double want = std::exp(static_cast<double>(static_cast<float>(x)));
    const double got = vec_exp_reference(static_cast<float>(x));
    ASSERT_NEAR(got, want, 4e-7 * want) << "x = " << x;
  }
  EXPECT_EQ(vec_exp_reference(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(vec_exp_reference(-1000.0f), 0.0f);
  EXPECT_TRUE(std::isinf(vec_exp_reference(1000.0f)));
  EXPECT_TRUE(std::isnan(vec_exp_reference(std::numeric_limits<float>::quiet_NaN())));
}

// A wide build of the vector kernels against the portable one, kernel by kernel, on odd lengths
// (vector tails) and values that reach exp's clamps.
void expect_vec_kernels_match_portable(const ops_detail::VecKernels* fast) {
  const ops_detail::VecKernels& ref = ops_detail::vec_kernels_portable();
  auto near = [](float a, float b) { return std::abs(a - b) <= 2e-6f * (1.0f + std::abs(b)); };
  for (int64_t n : {1, 15, 16, 17, 100, 1027}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const auto x = random_values(n, 1, -30, 30), y = random_values(n, 2), z = random_values(n, 3);
    std::vector<int32_t> docs(n);
    for (int64_t i = 0; i < n; ++i) docs[i] = static_cast<int32_t>(i % 3);
    std::vector<float> a(n), b(n), c(n), d(n);
    EXPECT_EQ(fast->max(x.data(), n), ref.max(x.data(), n));
    EXPECT_TRUE(near(fast->exp_sum(x.data(), a.data(), n, 3.0f), ref.exp_sum(x.data(), b.data(), n, 3.0f)));
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    EXPECT_TRUE(near(fast->sum_exp(x.data(), n, 3.0f), ref.sum_exp(x.data(), n, 3.0f)));
    fast->exp_scale(x.data(), a.data(), n, 1.0f, 0.5f);
    ref.exp_scale(x.data(), b.data(), n, 1.0f, 0.5f);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    // Signed sums in another order: each build is within (n + 2) u sum|terms| of the exact sum
    // (u = 2^-24; the standard bound for a product-sum), so they are within twice that apart.
    double abs_dot = 0, abs_dot3 = 0;
    for (int64_t i = 0; i < n; ++i) {
      abs_dot += std::abs(double(y[i]) * z[i]);
      abs_dot3 += std::abs(double(x[i]) * y[i] * z[i]);
    }
    const double gamma = double(n + 2) * 0x1p-24;
    EXPECT_LE(std::abs(double(fast->dot(y.data(), z.data(), n)) - ref.dot(y.data(), z.data(), n)),
              2 * gamma * abs_dot);
    EXPECT_LE(std::abs(double(fast->dot3(x.data(), y.data(), z.data(), n)) -
                       ref.dot3(x.data(), y.data(), z.data(), n)),
              2 * gamma * abs_dot3);
    EXPECT_TRUE(near(fast->sum_squares(y.data(), n), ref.sum_squares(y.data(), n)));
    a = x;
    b = x;
    fast->mask_docs(a.data(), docs.data(), 1, n);
    ref.mask_docs(b.data(), docs.data(), 1, n);
    EXPECT_EQ(a, b);
    a = y;
    b = y;
    fast->softmax_grad(z.data(), a.data(), n, 0.25f);
    ref.softmax_grad(z.data(), b.data(), n, 0.25f);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    {  // bf16 outputs: exactly each build's f32 kernels' values, rounded by f32_to_bf16
      std::vector<uint16_t> pa(n), pb(n), sa(n);
      auto is_rounded = [](uint16_t got, float want) { return got == f32_to_bf16(want); };
      for (const ops_detail::VecKernels* k : {fast, &ref}) {
        const float sum = k->exp_sum_bf16(x.data(), pa.data(), n, 3.0f);
        EXPECT_TRUE(near(sum, k->exp_sum(x.data(), b.data(), n, 3.0f)));
        for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(is_rounded(pa[i], b[i])) << i;
        k->softmax_grad_bf16(x.data(), y.data(), n, 2.0f, 0.25f, pb.data(), sa.data());
        k->exp_scale(x.data(), a.data(), n, 2.0f, 1.0f);
        c = y;
        k->softmax_grad(a.data(), c.data(), n, 0.25f);
        for (int64_t i = 0; i < n; ++i)
          ASSERT_TRUE(is_rounded(pb[i], a[i]) && is_rounded(sa[i], c[i])) << i;
      }
      const float nan = std::numeric_limits<float>::quiet_NaN();
      ref.exp_sum_bf16(&nan, pa.data(), 1, 0.0f);
      EXPECT_TRUE(std::isnan(bf16_to_f32(pa[0])));  // a NaN stays one
    }
    fast->log_softmax_grad(z.data(), y.data(), a.data(), n, 0.7f);
    ref.log_softmax_grad(z.data(), y.data(), b.data(), n, 0.7f);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    fast->silu_fwd(x.data(), a.data(), n);
    ref.silu_fwd(x.data(), b.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    fast->silu_bwd(x.data(), y.data(), a.data(), n);
    ref.silu_bwd(x.data(), y.data(), b.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    fast->swiglu_fwd(x.data(), y.data(), a.data(), n);
    ref.swiglu_fwd(x.data(), y.data(), b.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    fast->swiglu_bwd(x.data(), y.data(), z.data(), a.data(), c.data(), n);
    ref.swiglu_bwd(x.data(), y.data(), z.data(), b.data(), d.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i]) && near(c[i], d[i])) << i;
    fast->rmsnorm_fwd(x.data(), y.data(), 0.3f, a.data(), n);
    ref.rmsnorm_fwd(x.data(), y.data(), 0.3f, b.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    fast->rmsnorm_bwd(x.data(), y.data(), z.data(), 0.3f, 0.2f, a.data(), n);
    ref.rmsnorm_bwd(x.data(), y.data(), z.data(), 0.3f, 0.2f, b.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    a = y;
    b = y;
    fast->rmsnorm_dw(x.data(), z.data(), 0.3f, a.data(), n);
    ref.rmsnorm_dw(x.data(), z.data(), 0.3f, b.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(near(a[i], b[i])) << i;
    fast->dropout(x.data(), a.data(), n, 1000, 0xABCDu, ops_detail::dropout_threshold(0.3f), 2.0f);
    ref.dropout(x.data(), b.data(), n, 1000, 0xABCDu, ops_detail::dropout_threshold(0.3f), 2.0f);
    EXPECT_EQ(a, b);
    a = y;
    b = y;
    fast->scale(a.data(), n, 1.5f);
    ref.scale(b.data(), n, 1.5f);
    EXPECT_EQ(a, b);
  }
}

// The e^x-based kernels of a wide build against the portable one at e^x's edges: 0 below -87
// (and for -inf), +inf above 88, NaN for NaN, the sigmoid's saturation, and a score gradient small
// enough to be subnormal before its bf16 rounding.
void expect_vec_kernels_edges_match_portable(const ops_detail::VecKernels* fast) {
  const ops_detail::VecKernels& ref = ops_detail::vec_kernels_portable();
  const float inf = std::numeric_limits<float>::infinity(),
              nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {-inf,    -1000.0f, -88.0f, -87.01f, -87.0f, -86.99f, -50.0f,
                                -1e-30f, 0.0f,     1e-30f, 50.0f,   87.99f, 88.0f,   88.01f,
                                88.5f,   1000.0f,  inf,    nan,     -3.0f};
  const int64_t n = static_cast<int64_t>(x.size());  // 19: one whole vector and a tail
  const std::vector<float> y = random_values(n, 2), z = random_values(n, 3);
  auto same = [](float a, float b) {  // zeros, infinities and NaNs exactly, the rest to rounding
    if (std::isnan(b) || b == 0.0f || std::isinf(b)) return std::isnan(b) ? std::isnan(a) : a == b;
    return std::abs(a - b) <= 2e-6f * (1.0f + std::abs(b));
  };
  std::vector<float> a(n), b(n), c(n), d(n);
  auto expect_same = [&](const char* what) {
    for (int64_t i = 0; i < n; ++i)
      ASSERT_TRUE(same(a[i], b[i])) << what << " at x = " << x[i] << ": " << a[i] << " vs " << b[i];
  };
  fast->exp_scale(x.data(), a.data(), n, 0.0f, 1.0f);
  ref.exp_scale(x.data(), b.data(), n, 0.0f, 1.0f);
  expect_same("exp_scale");
  for (int64_t i = 0; i < n; ++i)
    EXPECT_TRUE(same(a[i], ops_detail::vec_exp_reference(x[i]))) << x[i];
  fast->exp_sum(x.data(), a.data(), n, 0.0f);
  ref.exp_sum(x.data(), b.data(), n, 0.0f);
  expect_same("exp_sum");
  fast->log_softmax_grad(x.data(), y.data(), a.data(), n, 0.7f);
  ref.log_softmax_grad(x.data(), y.data(), b.data(), n, 0.7f);
  expect_same("log_softmax_grad");
  fast->silu_fwd(x.data(), a.data(), n);
  ref.silu_fwd(x.data(), b.data(), n);
  expect_same("silu_fwd");
  fast->silu_bwd(x.data(), y.data(), a.data(), n);
  ref.silu_bwd(x.data(), y.data(), b.data(), n);
  expect_same("silu_bwd");
  fast->swiglu_fwd(x.data(), y.data(), a.data(), n);
  ref.swiglu_fwd(x.data(), y.data(), b.data(), n);
  expect_same("swiglu_fwd");
  fast->swiglu_bwd(x.data(), y.data(), z.data(), a.data(), c.data(), n);
  ref.swiglu_bwd(x.data(), y.data(), z.data(), b.data(), d.data(), n);
  expect_same("swiglu_bwd dgate");
  a = c;
  b = d;
  expect_same("swiglu_bwd dup");
  // Sums over the finite-or-zero part (an inf or NaN lane would make both sums inf / NaN).
  EXPECT_TRUE(same(fast->sum_exp(x.data(), 11, 0.0f), ref.sum_exp(x.data(), 11, 0.0f)));
  // bf16 outputs: each build's f32 values rounded by f32_to_bf16, subnormal ones included.
  std::vector<float> s(n), dp(n, 1e-5f);
  for (int64_t i = 0; i < n; ++i) s[i] = std::isfinite(x[i]) ? x[i] : -80.0f;
  s[0] = -80.0f;  // p ~ 1.8e-35 and p (dp - delta) ~ 1.8e-40: subnormal
  std::vector<uint16_t> pb(n), sb(n);
  fast->softmax_grad_bf16(s.data(), dp.data(), n, 0.0f, 0.0f, pb.data(), sb.data());
  fast->exp_scale(s.data(), a.data(), n, 0.0f, 1.0f);
  c = dp;
  fast->softmax_grad(a.data(), c.data(), n, 0.0f);
  ASSERT_NE(c[0], 0.0f);
  ASSERT_LT(std::abs(c[0]), std::numeric_limits<float>::min());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(pb[i], f32_to_bf16(a[i])) << "p at s = " << s[i];
    EXPECT_EQ(sb[i], f32_to_bf16(c[i])) << "dS at s = " << s[i];
  }
  fast->exp_sum_bf16(x.data(), pb.data(), n, 0.0f);
  fast->exp_scale(x.data(), a.data(), n, 0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float got = bf16_to_f32(pb[i]);
    EXPECT_TRUE(std::isnan(a[i]) ? std::isnan(got) : pb[i] == f32_to_bf16(a[i])) << x[i];
  }
}

TEST(Ops, VecKernelsAvx512MatchPortable) {
  const ops_detail::VecKernels* fast = ops_detail::vec_kernels_avx512();
  if (!fast) GTEST_SKIP() << "SKIPPED: no AVX-512 (+BF16) on this CPU";
  expect_vec_kernels_match_portable(fast);
  expect_vec_kernels_edges_match_portable(fast);
}

TEST(Ops, VecKernelsAvx2MatchPortable) {
  const ops_detail::VecKernels* fast = ops_detail::vec_kernels_avx2();
  if (!fast) GTEST_SKIP() << "SKIPPED: no AVX2 + FMA + F16C on this CPU";
  expect_vec_kernels_match_portable(fast);
  expect_vec_kernels_edges_match_portable(fast);
}

// The table vec_kernels() hands the ops is the widest build this CPU runs.
TEST(Ops, VecKernelsPickTheWidestBuildTheCpuRuns) {
  const ops_detail::VecKernels* want = ops_detail::vec_kernels_avx512();
  if (!want) want = ops_detail::vec_kernels_avx2();
  if (!want) want = &ops_detail::vec_kernels_portable();
  EXPECT_STREQ(ops_detail::vec_kernels().name, want->name);
}

// ---- views -----------------------------------------------------------------------------------

TEST(Ops, ViewsShareStorageAndReadTheRightElements) {
  Tensor x = random_tensor({2, 3, 4}, 1);
  const auto v = x.to_vector();
  Tensor r = reshape(x, {6, -1});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.data_f32(), x.data_f32());  // no copy
  Tensor t = transpose(x, 0, 2);
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(t.storage().get(), x.storage().get());
  Tensor p = permute(x, {1, 2, 0});
  Tensor s = slice(x, 1, 1, 2);
  EXPECT_EQ(s.data_f32(), x.data_f32() + 4);
  const auto vt = t.to_vector(), vp = p.to_vector(), vs = s.to_vector();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) {
        const float e = v[(i * 3 + j) * 4 + k];
        EXPECT_EQ(vt[(k * 3 + j) * 2 + i], e);
        EXPECT_EQ(vp[(j * 4 + k) * 2 + i], e);
        if (j >= 1) {
          EXPECT_EQ(vs[(i * 2 + (j - 1)) * 4 + k], e);
        }
      }
  // reshape of a non-contiguous view copies, in logical order.
  Tensor rt = reshape(t, {-1});
  EXPECT_TRUE(rt.is_contiguous());
  EXPECT_EQ(rt.to_vector(), vt);
  EXPECT_EQ(contiguous(t).to_vector(), vt);
  EXPECT_EQ(contiguous(x).impl(), x.impl());
  // reshape works for any dtype when contiguous (a quantized weight seen as 1-D).
  Tensor q = Tensor::quantized_from({2, 32}, DType::Q8_0, random_values(64, 2));
  EXPECT_EQ(reshape(q, {64}).shape(), Shape{64});
}

TEST(Ops, ConcatMatchesLoops) {
  Tensor a = random_tensor({2, 3}, 1), b = random_tensor({2, 2}, 2);
  const auto va = a.to_vector(), vb = b.to_vector();
  const auto c = concat({a, b}, -1).to_vector();
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) EXPECT_EQ(c[i * 5 + j], va[i * 3 + j]);
    for (int j = 0; j < 2; ++j) EXPECT_EQ(c[i * 5 + 3 + j], vb[i * 2 + j]);
  }
  const auto c0 = concat({a, transpose(random_tensor({3, 1}, 3), 0, 1)}, 0);
  EXPECT_EQ(c0.shape(), (Shape{3, 3}));
}

// ---- linear, matmul --------------------------------------------------------------------------

std::vector<double> naive_linear(const std::vector<float>& x, const std::vector<float>& w,
                                 const std::vector<float>* bias, int64_t M, int64_t N, int64_t K) {
  std::vector<double> y(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? (*bias)[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[m * K + k]) * w[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}

TEST(Ops, LinearF32WithBiasMatchesLoops) {
  Tensor x = random_tensor({2, 5, 24}, 1), w = random_tensor({7, 24}, 2), b = random_tensor({7}, 3);
  const auto vb = b.to_vector();
  Tensor y = linear(x, w, b, Precision::F32);
  EXPECT_EQ(y.shape(), (Shape{2, 5, 7}));
  expect_close(y.to_vector(), naive_linear(x.to_vector(), w.to_vector(), &vb, 10, 7, 24), 1e-5, 1e-5);
}

TEST(Ops, LinearFrozenQuantizedWeightsMatchDequantizedLoops) {
  for (DType dt : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::NF4, DType::BF16, DType::F16}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    Tensor w = Tensor::quantized_from({5, 64}, dt, random_values(5 * 64, 4));
    Tensor x = random_tensor({3, 64}, 5);
    expect_close(linear(x, w, Tensor(), Precision::F32).to_vector(),
                 naive_linear(x.to_vector(), w.to_vector(), nullptr, 3, 5, 64), 1e-5, 1e-5);
  }
  for (DType dt : {DType::Q4_K, DType::Q6_K}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    Tensor w = Tensor::quantized_from({3, 256}, dt, random_values(3 * 256, 6));
    Tensor x = random_tensor({2, 256}, 7);
    expect_close(linear(x, w, Tensor(), Precision::F32).to_vector(),
                 naive_linear(x.to_vector(), w.to_vector(), nullptr, 2, 3, 256), 1e-4, 1e-5);
  }
}

TEST(Ops, LinearBf16PrecisionIsCloseToF32) {
  Tensor x = random_tensor({16, 64}, 1), w = random_tensor({32, 64}, 2);
  const auto ref = naive_linear(x.to_vector(), w.to_vector(), nullptr, 16, 32, 64);
  // bf16 inputs carry 8 mantissa bits: ~0.4% per product, sums of 64 products of O(1/3).
  expect_close(linear(x, w, Tensor(), Precision::BF16).to_vector(), ref, 5e-2, 1e-2);
}

TEST(Ops, MatmulBatchedAndTransposedMatchLoops) {
  Tensor a = random_tensor({2, 3, 4}, 1), b = random_tensor({2, 4, 5}, 2);
  const auto va = a.to_vector(), vb = b.to_vector();
  std::vector<double> ref;
  for (int i = 0; i < 2; ++i)
    for (int m = 0; m < 3; ++m)
      for (int n = 0; n < 5; ++n) {
        double s = 0;
        for (int k = 0; k < 4; ++k) s += static_cast<double>(va[(i * 3 + m) * 4 + k]) * vb[(i * 4 + k) * 5 + n];
        ref.push_back(s);
      }
  expect_close(matmul(a, b).to_vector(), ref, 1e-5, 1e-5);
  // Same product from transposed storage on both sides.
  Tensor at = contiguous(transpose(a, 1, 2)), bt = contiguous(transpose(b, 1, 2));
  expect_close(matmul(transpose(at, 1, 2), transpose(bt, 1, 2)).to_vector(), ref, 1e-5, 1e-5);
}

// ---- embedding -------------------------------------------------------------------------------

TEST(Ops, EmbeddingGathersRowsOfAnyDtype) {
  const std::vector<int32_t> ids = {4, 0, 4, 2, 1, 3};
  for (DType dt : {DType::F32, DType::BF16, DType::Q8_0, DType::NF4}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    Tensor table = Tensor::quantized_from({5, 64}, dt, random_values(5 * 64, 1));
    const auto vt = table.to_vector();
    Tensor e = embedding(table, ids, {2, 3});
    EXPECT_EQ(e.shape(), (Shape{2, 3, 64}));
    const auto ve = e.to_vector();
    for (size_t i = 0; i < ids.size(); ++i)
      for (int j = 0; j < 64; ++j) ASSERT_EQ(ve[i * 64 + j], vt[ids[i] * 64 + j]);
  }
}

// ---- rms_norm --------------------------------------------------------------------------------

TEST(Ops, RmsNormMatchesLoops) {
  Tensor x = random_tensor({3, 4, 96}, 1), w = random_tensor({96}, 2, 0.5f, 1.5f);
  const auto vx = x.to_vector(), vw = w.to_vector();
  std::vector<double> ref;
  for (int r = 0; r < 12; ++r) {
    double ss = 0;
    for (int j = 0; j < 96; ++j) ss += static_cast<double>(vx[r * 96 + j]) * vx[r * 96 + j];
    const double inv = 1.0 / std::sqrt(ss / 96 + 1e-5);
    for (int j = 0; j < 96; ++j) ref.push_back(vx[r * 96 + j] * inv * vw[j]);
  }
  expect_close(rms_norm(x, w, 1e-5f).to_vector(), ref, 1e-6, 1e-5);
  // A frozen bf16 weight is widened to f32.
  Tensor wb = Tensor::quantized_from({96}, DType::BF16, vw);
  const auto vwb = wb.to_vector();
  std::vector<double> ref_b(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) ref_b[i] = ref[i] / vw[i % 96] * vwb[i % 96];
  expect_close(rms_norm(x, wb, 1e-5f).to_vector(), ref_b, 1e-6, 1e-5);
}

// ---- rope ------------------------------------------------------------------------------------

// inv_freq by the rule in the design brief, in double.
std::vector<double> reference_inv_freq(double theta, int64_t rd, const std::optional<Llama3RopeScaling>& s) {
  std::vector<double> f;
  for (int64_t i = 0; i < rd / 2; ++i) {
    double freq = std::pow(theta, -2.0 * i / rd);
    if (s) {
      const double orig = static_cast<double>(s->original_max_position_embeddings);
      const double wavelen = 2 * std::numbers::pi / freq;
      if (wavelen < orig / s->high_freq_factor) {
      } else if (wavelen > orig / s->low_freq_factor) {
        freq = freq / s->factor;
      } else {
        const double smooth = (orig / wavelen - s->low_freq_factor) / (s->high_freq_factor - s->low_freq_factor);
        freq = (1 - smooth) * freq / s->factor + smooth * freq;
      }
    }
    f.push_back(freq);
  }
  return f;
}

TEST(Ops, RopeInvFreqWithLlama3Scaling) {
  RopeConfig cfg;
  cfg.theta = 500000.0f;
  cfg.llama3_scaling = Llama3RopeScaling{8.0f, 1.0f, 4.0f, 8192};
  const auto got = rope_inv_freq(cfg, 128);
  const auto want = reference_inv_freq(500000.0, 128, cfg.llama3_scaling);
  expect_close(got, want, 0, 1e-6);
  // All three regimes occur for this (Llama 3.1) configuration.
  const auto plain = reference_inv_freq(500000.0, 128, std::nullopt);
  EXPECT_EQ(got[0], static_cast<float>(plain[0]));                     // high frequency kept
  EXPECT_NEAR(got[63], plain[63] / 8, 1e-6 * plain[63]);              // low frequency / factor
  int medium = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] < 0.99999 * plain[i] && got[i] > 1.00001 * plain[i] / 8) ++medium;
  EXPECT_GT(medium, 0);
}

void check_rope_formula(RopeStyle style, int64_t rotary_dim, bool llama3) {
  SCOPED_TRACE(std::string(style == RopeStyle::Half ? "half" : "interleaved") + " rd " +
               std::to_string(rotary_dim) + (llama3 ? " llama3" : ""));
  const int64_t B = 2, T = 5, H = 3, D = 16;
  RopeConfig cfg;
  cfg.theta = 10000.0f;
  cfg.style = style;
  cfg.rotary_dim = rotary_dim;
  if (llama3) cfg.llama3_scaling = Llama3RopeScaling{8.0f, 1.0f, 4.0f, 32};
  const std::vector<int32_t> pos = {0, 1, 2, 3, 4, 7, 8, 9, 0, 1};  // per batch row
  Tensor x = random_tensor({B, T, H, D}, 3);
  const auto vx = x.to_vector();
  const int64_t rd = rotary_dim == 0 ? D : rotary_dim, half = rd / 2;
  const auto freq = reference_inv_freq(10000.0, rd, cfg.llama3_scaling);
  std::vector<double> ref(vx.begin(), vx.end());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = ((b * T + t) * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const double angle = pos[b * T + t] * freq[i];
          const int64_t ia = style == RopeStyle::Half ? i : 2 * i;
          const int64_t ib = style == RopeStyle::Half ? i + half : 2 * i + 1;
          ref[base + ia] = vx[base + ia] * std::cos(angle) - vx[base + ib] * std::sin(angle);
          ref[base + ib] = vx[base + ia] * std::sin(angle) + vx[base + ib] * std::cos(angle);
        }
      }
  expect_close(rope(x, pos, cfg).to_vector(), ref, 2e-6, 1e-5);
  // A table made once gives the same result; T positions are shared over the batch.
  const std::vector<int32_t> shared = {0, 1, 2, 3, 4};
  const auto a = rope(x, make_rope_table(shared, cfg, D)).to_vector();
  const auto b = rope(x, std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4}, cfg).to_vector();
  EXPECT_EQ(a, b);
}

TEST(Ops, RopeMatchesTheDirectFormula) {
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Half})
    for (int64_t rd : {0, 8})
      for (bool llama3 : {false, true}) check_rope_formula(style, rd, llama3);
}

TEST(Ops, RopeStylesAgreeUnderThePermutationGgufApplies) {
  // llama.cpp's interleaved rope on GGUF-permuted q equals HF's half rope on the original q,
  // after the same permutation: GGUF stores row j of a head as HF row (j % 2) * D/2 + j / 2.
  const int64_t D = 8;
  Tensor x = random_tensor({1, 3, 2, D}, 4);
  const auto vx = x.to_vector();
  std::vector<float> permuted(vx.size());
  for (size_t v = 0; v < vx.size() / D; ++v)
    for (int64_t j = 0; j < D; ++j) permuted[v * D + j] = vx[v * D + (j % 2) * D / 2 + j / 2];
  RopeConfig half, inter;
  inter.style = RopeStyle::Interleaved;
  const std::vector<int32_t> pos = {3, 9, 27};
  const auto yh = rope(x, pos, half).to_vector();
  const auto yi = rope(Tensor::from_vector(x.shape(), permuted), pos, inter).to_vector();
  for (size_t v = 0; v < vx.size() / D; ++v)
    for (int64_t j = 0; j < D; ++j) EXPECT_NEAR(yi[v * D + j], yh[v * D + (j % 2) * D / 2 + j / 2], 1e-6);
}

// ---- attention -------------------------------------------------------------------------------

std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    const std::vector<int32_t>& docs, double scale) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  const auto vq = q.to_vector(), vk = k.to_vector(), vv = v.to_vector();
  auto doc = [&](int64_t b, int64_t t) {
    return static_cast<int64_t>(docs.size()) == T ? docs[t] : docs[b * T + t];
  };
  std::vector<double> out(vq.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hkv);
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(T);
        std::vector<bool> allowed(T);
        double m = -1e300;
        for (int64_t j = 0; j < T; ++j) {
          allowed[j] = (!causal || j <= i) && (docs.empty() || doc(b, j) == doc(b, i));
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += static_cast<double>(vq[((b * T + i) * Hq + h) * D + d]) * vk[((b * T + j) * Hkv + hk) * D + d];
          s[j] = dot * scale;
          if (allowed[j]) m = std::max(m, s[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < T; ++j) z += allowed[j] ? std::exp(s[j] - m) : 0.0;
        for (int64_t j = 0; j < T; ++j) {
          if (!allowed[j]) continue;
          const double p = std::exp(s[j] - m) / z;
          for (int64_t d = 0; d < D; ++d)
            out[((b * T + i) * Hq + h) * D + d] += p * vv[((b * T + j) * Hkv + hk) * D + d];
        }
      }
    }
  return out;
}

void check_attention_forward(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, bool causal,
                             const std::vector<int32_t>& docs, float scale) {
  SCOPED_TRACE("B " + std::to_string(B) + " T " + std::to_string(T) + " Hq " + std::to_string(Hq) +
               " Hkv " + std::to_string(Hkv) + (causal ? " causal" : "") + (docs.empty() ? "" : " docs"));
  Tensor q = random_tensor({B, T, Hq, D}, 1, -2, 2), k = random_tensor({B, T, Hkv, D}, 2, -2, 2),
         v = random_tensor({B, T, Hkv, D}, 3);
  AttentionOptions opt;
  opt.causal = causal;
  opt.document_ids = docs;
  opt.scale = scale;
  const double s = scale != 0 ? scale : 1.0 / std::sqrt(static_cast<double>(D));
  expect_close(attention(q, k, v, opt).to_vector(), naive_attention(q, k, v, causal, docs, s), 2e-6, 1e-4);
}

// linear_group_swiglu is swiglu of linear_group's two outputs, bit for bit: without gradients
// (on CPUs with AMX the combined route, the products never written out: M = 1024 rows) and
// with them (the gradients of x, A and B too). NF4 weights, LoRA terms on x for both.
TEST(Ops, LinearGroupSwigluIsSwigluOfTheGroup) {
  const int64_t K = 192, N = 96;
  const Tensor x = random_tensor({2, 512, K}, 1);
  const Tensor wg =
      Tensor::quantized_from({N, K}, DType::NF4, random_values(N * K, 2, -0.1f, 0.1f));
  const Tensor wu =
      Tensor::quantized_from({N, K}, DType::NF4, random_values(N * K, 3, -0.1f, 0.1f));
  Tensor ag = random_tensor({4, K}, 4, -0.1f, 0.1f), bg = random_tensor({N, 4}, 5, -0.1f, 0.1f);
  Tensor au = random_tensor({4, K}, 6, -0.1f, 0.1f), bu = random_tensor({N, 4}, 7, -0.1f, 0.1f);
  const auto group = [&](const Tensor& in) {
    return std::vector<GroupLinear>{{wg, Tensor(), LowRankTerm{in, ag, bg, 2.0f}},
                                    {wu, Tensor(), LowRankTerm{in, au, bu, 2.0f}}};
  };
  {
    NoGradGuard no_grad;
    const std::vector<Tensor> gu = linear_group(x, group(x));
    EXPECT_EQ(linear_group_swiglu(x, group(x)).to_vector(), swiglu(gu[0], gu[1]).to_vector());
  }
  const Tensor cot = random_tensor({2, 512, N}, 8);
  std::vector<std::vector<float>> grads[2];
  for (int fused = 0; fused < 2; ++fused) {
    Tensor xg = Tensor::from_vector(x.shape(), x.to_vector());
    for (Tensor* t : {&xg, &ag, &bg, &au, &bu}) {
      t->set_requires_grad(true);
      t->zero_grad();
    }
    Tensor y;
    if (fused) {
      y = linear_group_swiglu(xg, group(xg));
    } else {
      const std::vector<Tensor> gu = linear_group(xg, group(xg));
      y = swiglu(gu[0], gu[1]);
    }
    y.backward(cot);
    for (Tensor* t : {&xg, &ag, &bg, &au, &bu}) grads[fused].push_back(t->grad().to_vector());
  }
  EXPECT_EQ(grads[0], grads[1]);
  expect_error([&] { linear_group_swiglu(x, {group(x)[0]}); },
               {"linear_group_swiglu", "1 projections"});
}

TEST(Ops, AttentionMatchesNaiveWithExplicitMasks) {
  check_attention_forward(2, 9, 6, 2, 8, true, {}, 0);
  check_attention_forward(1, 9, 3, 3, 8, false, {}, 0.3f);
  check_attention_forward(2, 7, 4, 1, 4, true, {0, 0, 0, 1, 1, 2, 2, 5, 5, 6, 6, 6, 6, 6}, 0);
  check_attention_forward(2, 7, 4, 2, 4, false, {3, 3, 1, 1, 3, 1, 1}, 0);  // non-adjacent reuse
  // Several 64-row query blocks; documents crossing block edges.
  std::vector<int32_t> docs(2 * 150);
  for (int64_t t = 0; t < 300; ++t) docs[t] = static_cast<int32_t>(t % 150 < 40 ? 0 : (t % 150 < 130 ? 1 : 2));
  check_attention_forward(2, 150, 4, 2, 16, true, docs, 0);
  check_attention_forward(1, 150, 6, 2, 16, true, {}, 0);
}

TEST(Ops, AttentionOnNonContiguousInputs) {
  // q given as a transposed view of a [B, Hq, T, D] tensor.
  Tensor qh = random_tensor({1, 3, 5, 4}, 1), k = random_tensor({1, 5, 3, 4}, 2), v = random_tensor({1, 5, 3, 4}, 3);
  Tensor q = transpose(qh, 1, 2);
  expect_close(attention(q, k, v).to_vector(), naive_attention(contiguous(q), k, v, true, {}, 0.5), 2e-6, 1e-4);
}

// Attention's output and q / k / v gradients for seeded q, k, v (the same on every call) and
// output gradient r.
struct AttentionCase {
  int64_t B, T, Hq, Hkv, D;
  bool causal;
  bool docs;
};

std::vector<std::vector<float>> attention_and_grads(const AttentionCase& c,
                                                    const std::vector<int32_t>& docs,
                                                    const std::vector<float>& r, Precision p) {
  Tensor q = random_tensor({c.B, c.T, c.Hq, c.D}, 1, -2, 2);
  Tensor k = random_tensor({c.B, c.T, c.Hkv, c.D}, 2, -2, 2);
  Tensor v = random_tensor({c.B, c.T, c.Hkv, c.D}, 3);
  for (Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
  AttentionOptions opt;
  opt.causal = c.causal;
  opt.document_ids = docs;
  opt.precision = p;
  Tensor out = attention(q, k, v, opt);
  out.backward(Tensor::from_vector(out.shape(), r));
  return {out.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
}

// Each of out / dq / dk / dv in `got` within tol times the largest magnitude of `want`'s.
void expect_attention_close(const std::vector<std::vector<float>>& want,
                            const std::vector<std::vector<float>>& got, double tol) {
  const char* names[] = {"out", "dq", "dk", "dv"};
  for (size_t i = 0; i < 4; ++i) {
    double worst = 0, scale = 0;
    for (size_t j = 0; j < want[i].size(); ++j) {
      worst = std::max(worst, std::fabs(double(got[i][j]) - want[i][j]));
      scale = std::max(scale, std::fabs(double(want[i][j])));
    }
    EXPECT_GT(scale, 0.0) << names[i];
    EXPECT_LE(worst, tol * scale) << names[i];
  }
}

// bf16 products (q, k, v, dO and the probabilities rounded to bf16) against the f32 op, which
// the gradchecks and the naive loops above hold: outputs and all three gradients within bf16
// rounding (relative to each tensor's largest value), over GQA, causal, documents and several
// query blocks. A swapped or transposed operand errs by O(1).
TEST(Ops, AttentionBf16ProductsMatchF32) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "SKIPPED: this CPU has no AVX512_BF16";
  for (const AttentionCase c :
       {AttentionCase{2, 9, 6, 2, 8, true, false}, AttentionCase{1, 150, 6, 2, 16, true, true},
        AttentionCase{2, 130, 4, 4, 32, false, false}, AttentionCase{1, 200, 9, 3, 64, true, false},
        // Shapes of the AMX tile route (T and D multiples of 32), where it exists.
        AttentionCase{1, 256, 9, 3, 64, true, true},
        AttentionCase{2, 128, 4, 4, 32, false, false}}) {
    SCOPED_TRACE("T " + std::to_string(c.T) + " Hq " + std::to_string(c.Hq));
    std::vector<int32_t> docs;
    if (c.docs)
      for (int64_t t = 0; t < c.B * c.T; ++t) docs.push_back(static_cast<int32_t>((t % c.T) / 50));
    const std::vector<float> r = random_values(c.B * c.T * c.Hq * c.D, 9);
    expect_attention_close(attention_and_grads(c, docs, r, Precision::F32),
                           attention_and_grads(c, docs, r, Precision::BF16), 2e-2);
  }
}

// Where the CPU has AMX tiles, bf16 attention of fitting shapes (T and D multiples of 32) runs
// its score, output and dQ products on them in strips, with key ranges widened to multiples of
// 32 (attention.cpp); switched off, the same call runs oneDNN's products over whole blocks. Both
// round the same operands and differ only in f32 summation order (and so in a few roundings of
// probabilities to bf16): outputs and gradients agree far inside the bf16-vs-f32 tolerance
// above. Documents start at odd positions, so the widened ranges hold masked keys.
TEST(Ops, AttentionOnAmxTilesMatchesTheBlockProducts) {
  if (!amx_tiles_available())
    GTEST_SKIP() << "SKIPPED: no AMX tiles on this CPU (or LOOM_NO_AMX is set)";
  for (const AttentionCase c :
       {AttentionCase{2, 256, 9, 3, 64, true, true}, AttentionCase{1, 160, 4, 4, 32, false, false},
        AttentionCase{1, 96, 6, 2, 64, true, false}}) {
    SCOPED_TRACE("T " + std::to_string(c.T) + " Hq " + std::to_string(c.Hq));
    std::vector<int32_t> docs;
    if (c.docs)
      for (int64_t t = 0; t < c.B * c.T; ++t)
        docs.push_back(static_cast<int32_t>((t % c.T + 17) / 45));
    const std::vector<float> r = random_values(c.B * c.T * c.Hq * c.D, 9);
    set_amx_tiles_allowed(false);
    const auto blocks = attention_and_grads(c, docs, r, Precision::BF16);
    set_amx_tiles_allowed(true);
    expect_attention_close(blocks, attention_and_grads(c, docs, r, Precision::BF16), 2e-3);
  }
}

// ---- activations, dropout --------------------------------------------------------------------

TEST(Ops, SiluAndSwigluMatchLoops) {
  Tensor g = random_tensor({7, 300}, 1, -12, 12), u = random_tensor({7, 300}, 2);
  const auto vg = g.to_vector(), vu = u.to_vector();
  std::vector<double> si, sw;
  for (size_t i = 0; i < vg.size(); ++i) {
    const double s = vg[i] / (1.0 + std::exp(-static_cast<double>(vg[i])));
    si.push_back(s);
    sw.push_back(s * vu[i]);
  }
  expect_close(silu(g).to_vector(), si, 1e-6, 1e-5);
  expect_close(swiglu(g, u).to_vector(), sw, 1e-6, 1e-5);
}

TEST(Ops, DropoutMaskIsSeededScaledAndHasTheRightRate) {
  Tensor x = Tensor::full({200, 200}, 2.0f);
  EXPECT_EQ(dropout(x, 0.0f, 5).impl(), x.impl());  // identity
  const auto a = dropout(x, 0.25f, 42).to_vector();
  const auto b = dropout(x, 0.25f, 42).to_vector();
  const auto c = dropout(x, 0.25f, 43).to_vector();
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  int64_t dropped = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool keep = dropout_keeps(42, static_cast<int64_t>(i), 0.25f);
    ASSERT_EQ(a[i], keep ? 2.0f / 0.75f : 0.0f);
    dropped += keep ? 0 : 1;
  }
  EXPECT_NEAR(static_cast<double>(dropped) / 40000.0, 0.25, 0.01);
  // The mask depends on (seed, index) only, not on how the work is split over threads.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto single = dropout(x, 0.25f, 42).to_vector();
  omp_set_num_threads(threads);
  EXPECT_EQ(single, a);
}

// ---- cross-entropy ---------------------------------------------------------------------------

struct NaiveCe {
  double loss_sum = 0;
  int64_t count = 0;
  std::vector<double> dh;  // gradient of the mean loss w.r.t. hidden
};

NaiveCe naive_ce(const std::vector<float>& h, const std::vector<float>& w, const std::vector<int32_t>& t,
                 int64_t N, int64_t V, int64_t D, int32_t ignore) {
  NaiveCe r;
  r.dh.assign(static_cast<size_t>(N * D), 0.0);
  std::vector<std::vector<double>> probs(N);
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore) continue;
    std::vector<double> logits(V);
    double m = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += static_cast<double>(h[i * D + d]) * w[v * D + d];
      logits[v] = s;
      m = std::max(m, s);
    }
    double z = 0;
    for (double l : logits) z += std::exp(l - m);
    r.loss_sum += m + std::log(z) - logits[t[i]];
    ++r.count;
    probs[i].resize(V);
    for (int64_t v = 0; v < V; ++v) probs[i][v] = std::exp(logits[v] - m) / z - (v == t[i] ? 1.0 : 0.0);
  }
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore) continue;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t d = 0; d < D; ++d) r.dh[i * D + d] += probs[i][v] * w[v * D + d] / r.count;
  }
  return r;
}

TEST(Ops, CrossEntropyEqualsNaiveFullLogitsForEveryChunkSize) {
  const int64_t N = 23, V = 50, D = 16;
  Tensor w = random_tensor({V, D}, 1);
  std::vector<int32_t> targets(N);
  std::mt19937 rng(3);
  for (int64_t i = 0; i < N; ++i) targets[i] = (i % 5 == 2) ? -100 : static_cast<int32_t>(rng() % V);
  const std::vector<float> hv = random_values(N * D, 2);
  const NaiveCe ref = naive_ce(hv, w.to_vector(), targets, N, V, D, -100);
  for (int64_t chunk : {int64_t{1}, int64_t{7}, N, int64_t{0}}) {  // 0: automatic
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    Tensor h = Tensor::from_vector({N, D}, hv);
    h.set_requires_grad(true);
    CrossEntropyOptions opt;
    opt.chunk_rows = chunk;
    opt.precision = Precision::F32;
    CrossEntropyResult r = cross_entropy_chunked(h, w, targets, opt);
    EXPECT_EQ(r.n_tokens, ref.count);
    EXPECT_NEAR(r.loss_sum, ref.loss_sum, 1e-4);
    EXPECT_NEAR(r.loss.item(), ref.loss_sum / ref.count, 1e-5);
    r.loss.backward();
    expect_close(h.grad().to_vector(), ref.dh, 1e-6, 1e-4, "dhidden");
  }
}

TEST(Ops, CrossEntropyWithQuantizedTiedWeight) {
  const int64_t N = 6, V = 10, D = 32;
  Tensor w = Tensor::quantized_from({V, D}, DType::Q8_0, random_values(V * D, 1));
  const std::vector<float> hv = random_values(N * D, 2);
  const std::vector<int32_t> targets = {1, 9, 0, 0, 5, 3};
  const NaiveCe ref = naive_ce(hv, w.to_vector(), targets, N, V, D, -100);
  CrossEntropyOptions opt;
  opt.chunk_rows = 4;
  opt.precision = Precision::F32;
  CrossEntropyResult r = cross_entropy_chunked(Tensor::from_vector({2, 3, D}, hv), w, targets, opt);
  EXPECT_NEAR(r.loss.item(), ref.loss_sum / N, 1e-5);
}

// ---- shapes large enough for the multi-threaded paths ----------------------------------------

TEST(Ops, LargeShapesMatchReferences) {
  // Attention: 4 q heads on 1 kv head, T = 256 -> 256 stacked rows x up to 256 keys per block.
  check_attention_forward(1, 256, 4, 1, 16, true, {}, 0);
  // CE: chunks of 64 rows x 4096 logits; dhidden against the naive gradient.
  const int64_t N = 80, V = 4096, D = 32;
  Tensor w = random_tensor({V, D}, 1, -0.2f, 0.2f);
  std::vector<int32_t> targets(N);
  for (int64_t i = 0; i < N; ++i) targets[i] = i % 9 == 4 ? -100 : static_cast<int32_t>((i * 977) % V);
  const std::vector<float> hv = random_values(N * D, 2);
  const NaiveCe ref = naive_ce(hv, w.to_vector(), targets, N, V, D, -100);
  Tensor h = Tensor::from_vector({N, D}, hv);
  h.set_requires_grad(true);
  CrossEntropyOptions opt;
  opt.chunk_rows = 64;
  opt.precision = Precision::F32;
  CrossEntropyResult r = cross_entropy_chunked(h, w, targets, opt);
  EXPECT_NEAR(r.loss.item(), ref.loss_sum / ref.count, 1e-5);
  r.loss.backward();
  expect_close(h.grad().to_vector(), ref.dh, 1e-7, 1e-4, "dhidden");
  // RMSNorm over 64 rows of 576, softmax and swiglu over 200 x 200.
  Tensor x = random_tensor({64, 576}, 3), nw = random_tensor({576}, 4, 0.5f, 1.5f);
  const auto vx = x.to_vector(), vw = nw.to_vector();
  std::vector<double> norm_ref;
  for (int r0 = 0; r0 < 64; ++r0) {
    double ss = 0;
    for (int j = 0; j < 576; ++j) ss += static_cast<double>(vx[r0 * 576 + j]) * vx[r0 * 576 + j];
    for (int j = 0; j < 576; ++j) norm_ref.push_back(vx[r0 * 576 + j] / std::sqrt(ss / 576 + 1e-6) * vw[j]);
  }
  expect_close(rms_norm(x, nw, 1e-6f).to_vector(), norm_ref, 1e-6, 1e-5, "rms_norm");
  Tensor a = random_tensor({200, 200}, 5, -8, 8), b = random_tensor({200, 200}, 6);
  const auto va = a.to_vector(), vb = b.to_vector();
  std::vector<double> sw, sm;
  for (size_t i = 0; i < va.size(); ++i) sw.push_back(va[i] / (1.0 + std::exp(-static_cast<double>(va[i]))) * vb[i]);
  for (int r0 = 0; r0 < 200; ++r0) {
    double m = -1e300, z = 0;
    for (int j = 0; j < 200; ++j) m = std::max(m, static_cast<double>(va[r0 * 200 + j]));
    for (int j = 0; j < 200; ++j) z += std::exp(va[r0 * 200 + j] - m);
    for (int j = 0; j < 200; ++j) sm.push_back(std::exp(va[r0 * 200 + j] - m) / z);
  }
  expect_close(swiglu(a, b).to_vector(), sw, 1e-6, 1e-5, "swiglu");
  expect_close(softmax(a).to_vector(), sm, 1e-7, 1e-5, "softmax");
}

// ---- error messages --------------------------------------------------------------------------

TEST(Ops, ErrorsNameTheOpAndTheShapes) {
  Tensor x = random_tensor({2, 5}, 1), w = random_tensor({3, 4}, 2);
  expect_error([&] { linear(x, w); }, {"linear:", "[2, 5]", "[3, 4]", "[..., 4]"});
  expect_error([&] { linear(random_tensor({2, 4}, 1), w, random_tensor({4}, 3)); }, {"linear:", "bias", "[3]"});
  expect_error([&] { add(x, random_tensor({3}, 3)); }, {"add:", "[2, 5]", "[3]"});
  expect_error([&] { mul(x, random_tensor({4, 5}, 3)); }, {"mul:", "do not broadcast"});
  expect_error([&] { matmul(x, random_tensor({4, 2}, 3)); }, {"matmul:", "[2, 5]", "[4, 2]"});
  expect_error([&] { reshape(x, {3, -1}); }, {"reshape:", "[2, 5]"});
  expect_error([&] { slice(x, 1, 3, 4); }, {"slice:", "[3, 7)", "[2, 5]"});
  expect_error([&] { concat({x, random_tensor({3, 4}, 3)}, 0); }, {"concat:", "[3, 4]", "[2, 5]"});
  expect_error([&] { transpose(x, 0, 2); }, {"transpose:", "dim 2"});
  expect_error([&] { rms_norm(x, random_tensor({4}, 3), 1e-5f); }, {"rms_norm:", "[4]", "[5]"});
  expect_error([&] { rope(x, std::vector<int32_t>{0, 1}, RopeConfig{}); }, {"rope:", "[B, T, H, D]", "[2, 5]"});
  expect_error([&] { rope(random_tensor({1, 3, 2, 4}, 1), std::vector<int32_t>{0, 1}, RopeConfig{}); },
               {"rope:", "T=3", "got 2"});
  RopeConfig odd;
  odd.rotary_dim = 3;
  expect_error([&] { rope(random_tensor({1, 2, 1, 4}, 1), std::vector<int32_t>{0, 1}, odd); }, {"rope:", "rotary_dim 3"});
  Tensor q = random_tensor({1, 4, 4, 8}, 1), kv = random_tensor({1, 4, 3, 8}, 2);
  expect_error([&] { attention(q, kv, kv); }, {"attention:", "(4)", "(3)"});
  expect_error([&] { attention(q, random_tensor({1, 4, 2, 6}, 2), random_tensor({1, 4, 2, 6}, 2)); },
               {"attention:", "[1, 4, 2, 6]", "[1, 4, Hkv, 8]"});
  AttentionOptions bad_docs;
  const std::vector<int32_t> three = {0, 0, 1};
  bad_docs.document_ids = three;
  expect_error([&] { attention(q, random_tensor({1, 4, 2, 8}, 2), random_tensor({1, 4, 2, 8}, 2), bad_docs); },
               {"attention:", "document_ids", "3 entries"});
  expect_error([&] { swiglu(x, random_tensor({5, 2}, 3)); }, {"swiglu:", "[2, 5]", "[5, 2]"});
  expect_error([&] { dropout(x, 1.0f, 0); }, {"dropout:", "[0, 1)"});
  Tensor table = random_tensor({10, 4}, 1).set_name("tok_embeddings");
  expect_error([&] { embedding(table, std::vector<int32_t>{1, 2, 10}); },
               {"embedding:", "token id 10", "position 2", "10 rows", "tok_embeddings"});
  expect_error([&] { embedding(table, std::vector<int32_t>{-1}); }, {"embedding:", "token id -1", "position 0"});
  Tensor h = random_tensor({3, 4}, 1);
  expect_error([&] { cross_entropy_chunked(h, table, std::vector<int32_t>{1, 12, 0}); },
               {"cross_entropy_chunked:", "target 12", "row 1", "vocabulary of 10"});
  CrossEntropyOptions negative;
  negative.chunk_rows = -1;
  expect_error([&] { cross_entropy_chunked(h, table, std::vector<int32_t>{1, 2, 3}, negative); },
               {"cross_entropy_chunked:", "chunk_rows", "-1"});
  expect_error([&] { cross_entropy_chunked(h, table, std::vector<int32_t>{1, 2}); },
               {"cross_entropy_chunked:", "2 targets", "3 rows"});
  expect_error([&] { cross_entropy_chunked(random_tensor({3, 5}, 1), table, std::vector<int32_t>{1, 2, 3}); },
               {"cross_entropy_chunked:", "[3, 5]", "[..., 4]"});
  Tensor wq = Tensor::quantized_from({2, 32}, DType::Q8_0, random_values(64, 3));
  expect_error([&] { transpose(wq, 0, 1); }, {"transpose:", "q8_0"});
}

}  // namespace
}  // namespace loom
