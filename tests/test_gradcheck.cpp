// Gradient checks for every differentiable op in autograd/ops.h: analytic gradients from
// backward() against central finite differences.
//
// Each check builds a scalar loss L = sum(out * R) with R a fixed random projection of the op's
// output (so every output element matters with a different weight), seeds backward with R, and
// compares each input element's gradient with (L(x + eps) - L(x - eps)) / (x+ - x-), where the
// loss sums are done in double and x+/x- are the f32 values actually stored. The ops run in f32,
// so the finite differences carry f32 rounding noise of about 1e-7 * |L| / eps: ops that are
// linear in the checked input (views, linear, matmul, rope, embedding, add, mul) use eps = 1e-2
// and tight tolerances (no truncation error); smooth nonlinear ops (softmax, norms, attention,
// silu, cross-entropy) use eps ~ 1e-3..1e-2 and looser ones, as commented per test. Measured, the
// worst check uses about 15% of its tolerance, while vjps made wrong by 1% (tried by hand on
// attention, softmax, swiglu, rms_norm and cross-entropy) fail; RejectsAWrongVjp keeps one such
// case in the suite.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>

#include "autograd/check.h"
#include "autograd/ops.h"
#include "autograd/tape.h"

namespace loom {
namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct Tolerance {
  double eps;   // finite-difference step
  double atol;  // |analytic - numeric| <= atol + rtol * |numeric|
  double rtol;
};

struct Report {
  bool ok = true;
  std::string detail;
  double worst = 0;  // worst |analytic - numeric| / (atol + rtol * |numeric|); fails above 1
};

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

Tensor param(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = random_tensor(shape, seed, lo, hi);
  t.set_requires_grad(true);
  return t;
}

double projected_loss(const Tensor& out, const std::vector<float>& r) {
  const std::vector<float> v = out.to_vector();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += static_cast<double>(v[i]) * r[i];
  return s;
}

// Checks the gradient of every input that requires grad. Inputs must be contiguous leaves.
Report gradcheck(const Fn& f, const std::vector<Tensor>& inputs, Tolerance tol, uint64_t seed = 7) {
  for (const Tensor& in : inputs) {
    EXPECT_TRUE(in.is_contiguous() && !in.grad_fn());
    Tensor(in).zero_grad();
  }
  Tensor out = f(inputs);
  const std::vector<float> r = random_values(out.numel(), seed ^ 0x5eed);
  out.backward(Tensor::from_vector(out.shape(), r));

  Report rep;
  double numeric_norm = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& in = inputs[k];
    if (!in.requires_grad()) continue;
    EXPECT_TRUE(in.grad().defined()) << "input " << k << " got no gradient";
    const std::vector<float> analytic = in.grad().defined() ? in.grad().to_vector()
                                                            : std::vector<float>(in.numel(), 0.0f);
    float* p = in.data_f32();
    for (int64_t j = 0; j < in.numel(); ++j) {
      const float x0 = p[j];
      const float xp = x0 + static_cast<float>(tol.eps), xm = x0 - static_cast<float>(tol.eps);
      double lp, lm;
      {
        NoGradGuard no_grad;
        p[j] = xp;
        lp = projected_loss(f(inputs), r);
        p[j] = xm;
        lm = projected_loss(f(inputs), r);
        p[j] = x0;
      }
      const double numeric = (lp - lm) / (static_cast<double>(xp) - static_cast<double>(xm));
      numeric_norm += numeric * numeric;
      const double a = analytic[static_cast<size_t>(j)];
      const double ratio = std::abs(a - numeric) / (tol.atol + tol.rtol * std::abs(numeric));
      rep.worst = std::max(rep.worst, ratio);
      if (ratio > 1.0 && rep.ok) {
        rep.ok = false;
        rep.detail = "input " + std::to_string(k) + " element " + std::to_string(j) +
                     ": analytic " + std::to_string(a) + " vs numeric " + std::to_string(numeric);
      }
    }
  }
  // A check whose numeric gradient is all zero would pass any vjp returning zeros.
  if (rep.ok && numeric_norm == 0) {
    rep.ok = false;
    rep.detail = "numeric gradient is zero everywhere: the check would not catch a wrong vjp";
  }
  return rep;
}

#define EXPECT_GRADCHECK(...)                         \
  do {                                                \
    const Report rep_ = gradcheck(__VA_ARGS__);       \
    EXPECT_TRUE(rep_.ok) << rep_.detail;              \
  } while (0)

// Linear ops: the finite difference has no truncation error, only f32 rounding.
constexpr Tolerance kLinearTol{1e-2, 2e-4, 2e-4};
// Smooth nonlinear ops with O(1) gradients: truncation ~eps^2, rounding ~1e-7/eps.
constexpr Tolerance kSmoothTol{3e-3, 5e-4, 2e-3};

// ---- the checker itself --------------------------------------------------------------------

// An op whose vjp is wrong by 5%: the checker must reject it.
Tensor square_with_wrong_vjp(const Tensor& x) {
  std::vector<float> v = x.to_vector();
  for (float& e : v) e = e * e;
  return record(Tensor::from_vector(x.shape(), v), "bad_square", {x}, [x](const Tensor& g, const Tensor&) {
    std::vector<float> gv = g.to_vector(), xv = x.to_vector();
    for (size_t i = 0; i < gv.size(); ++i) gv[i] *= 2.0f * xv[i] * 1.05f;
    return std::vector<Tensor>{Tensor::from_vector(x.shape(), gv)};
  });
}

TEST(Gradcheck, RejectsAWrongVjp) {
  Tensor x = param({3, 4}, 1);
  const Report rep = gradcheck([](const std::vector<Tensor>& in) { return square_with_wrong_vjp(in[0]); },
                               {x}, kSmoothTol);
  EXPECT_FALSE(rep.ok);
}

TEST(Gradcheck, RejectsAMissingGradientTerm) {
  // mul's gradient w.r.t. b computed but a's replaced by zeros: the check on a must fail.
  Tensor a = param({2, 3}, 2), b = random_tensor({2, 3}, 3);
  const Report rep = gradcheck(
      [](const std::vector<Tensor>& in) {
        Tensor frozen = in[0].detach();  // wrong: cuts the gradient path
        return add(mul(frozen, in[1]), scale(in[0], 0.0f));
      },
      {a, b}, kLinearTol);
  EXPECT_FALSE(rep.ok);
}

// ---- elementwise -----------------------------------------------------------------------------

TEST(Gradcheck, AddSameShape) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return add(in[0], in[1]); },
                   {param({3, 5}, 1), param({3, 5}, 2)}, kLinearTol);
}

TEST(Gradcheck, AddBroadcastTrailing) {
  // b [4] broadcast over [2, 3, 4]: b's gradient sums over 6 rows.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return add(in[0], in[1]); },
                   {param({2, 3, 4}, 1), param({4}, 2)}, kLinearTol);
}

TEST(Gradcheck, AddBroadcastMiddleAndBothSides) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return add(in[0], in[1]); },
                   {param({2, 3, 4}, 1), param({3, 1}, 2)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return add(in[0], in[1]); },
                   {param({2, 1, 4}, 3), param({3, 1}, 4)}, kLinearTol);
}

TEST(Gradcheck, SubBroadcast) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return sub(in[0], in[1]); },
                   {param({2, 3, 4}, 1), param({4}, 2)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return sub(in[0], in[1]); },
                   {param({1, 4}, 3), param({3, 4}, 4)}, kLinearTol);
}

TEST(Gradcheck, MulBroadcastAndScalar) {
  // mul is bilinear: the loss is linear in each input with the other held, so linear tolerance.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0], in[1]); },
                   {param({2, 3, 4}, 1), param({3, 1}, 2)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0], in[1]); },
                   {param({}, 3), param({2, 5}, 4)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0], in[0]); },
                   {param({6}, 5)}, kSmoothTol);  // same tensor on both sides
}

TEST(Gradcheck, ElementwiseOnTransposedViews) {
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) { return mul(transpose(in[0], 0, 1), add(in[1], in[1])); },
      {param({4, 3}, 1), param({3, 4}, 2)}, kLinearTol);
}

TEST(Gradcheck, Scale) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return scale(in[0], -2.5f); },
                   {param({3, 4}, 1)}, kLinearTol);
}

// ---- reductions ------------------------------------------------------------------------------

TEST(Gradcheck, SumAndMean) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return sum(in[0]); }, {param({3, 4}, 1)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mean(transpose(in[0], 0, 1)); },
                   {param({3, 4}, 2)}, kLinearTol);
}

TEST(Gradcheck, Softmax) {
  // Values in [-2, 2] keep the probabilities away from saturation.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return softmax(in[0]); },
                   {param({3, 7}, 1, -2, 2)}, kSmoothTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return softmax(transpose(in[0], 0, 1)); },
                   {param({5, 4}, 2, -2, 2)}, kSmoothTol);
}

TEST(Gradcheck, LogSoftmax) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return log_softmax(in[0]); },
                   {param({3, 7}, 1, -2, 2)}, kSmoothTol);
}

// ---- views -----------------------------------------------------------------------------------

TEST(Gradcheck, Reshape) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return reshape(in[0], {4, -1}); },
                   {param({2, 3, 4}, 1)}, kLinearTol);
  // Non-contiguous input: reshape copies.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return reshape(transpose(in[0], 0, 2), {-1}); },
                   {param({2, 3, 4}, 2)}, kLinearTol);
}

TEST(Gradcheck, TransposeAndPermute) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return transpose(in[0], 0, 2); },
                   {param({2, 3, 4}, 1)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return permute(in[0], {1, 2, 0}); },
                   {param({2, 3, 4}, 2)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return contiguous(permute(in[0], {2, 0, 1})); },
                   {param({2, 3, 4}, 3)}, kLinearTol);
}

TEST(Gradcheck, Slice) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return slice(in[0], 1, 1, 2); },
                   {param({2, 4, 3}, 1)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return slice(transpose(in[0], 0, 1), -1, 1, 1); },
                   {param({3, 2}, 2)}, kLinearTol);
}

TEST(Gradcheck, Concat) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return concat({in[0], in[1], in[0]}, 1); },
                   {param({2, 3}, 1), param({2, 1}, 2)}, kLinearTol);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return concat({transpose(in[0], 0, 1), in[1]}, 0); },
                   {param({3, 2}, 3), param({4, 3}, 4)}, kLinearTol);
}

// ---- linear and matmul -----------------------------------------------------------------------

TEST(Gradcheck, LinearTrainableWeightAndBias) {
  // dX, dW and dbias all checked; x is 3-D.
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2], Precision::F32); },
      {param({2, 3, 5}, 1), param({4, 5}, 2), param({4}, 3)}, kLinearTol);
}

TEST(Gradcheck, LinearNonContiguousInput) {
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) { return linear(transpose(in[0], 0, 1), in[1], Tensor(), Precision::F32); },
      {param({5, 3}, 1), param({4, 5}, 2)}, kLinearTol);
}

TEST(Gradcheck, LinearFrozenF32WeightTrainableBias) {
  Tensor w = random_tensor({4, 5}, 9);
  EXPECT_GRADCHECK(
      [w](const std::vector<Tensor>& in) { return linear(in[0], w, in[1], Precision::F32); },
      {param({3, 5}, 1), param({4}, 2)}, kLinearTol);
  EXPECT_FALSE(w.grad().defined());
}

void check_frozen_quantized_linear(DType dtype, int64_t K) {
  SCOPED_TRACE(std::string(dtype_name(dtype)));
  Tensor w = Tensor::quantized_from({6, K}, dtype, random_values(6 * K, 11));
  // dX only: the product is linear in x, exact up to f32 rounding over K terms.
  EXPECT_GRADCHECK([w](const std::vector<Tensor>& in) { return linear(in[0], w, Tensor(), Precision::F32); },
                   {param({3, K}, 1)}, Tolerance{1e-2, 3e-4, 3e-4});
}

TEST(Gradcheck, LinearFrozenQuantizedWeight) {
  check_frozen_quantized_linear(DType::Q8_0, 32);
  check_frozen_quantized_linear(DType::NF4, 64);
  check_frozen_quantized_linear(DType::BF16, 8);
}

TEST(Gradcheck, LinearLowRankSharedInput) {
  // x feeds both the frozen product and the rank-2 update: dX sums both; dA, dB, dbias checked.
  Tensor w = random_tensor({4, 5}, 9);
  EXPECT_GRADCHECK(
      [w](const std::vector<Tensor>& in) {
        return linear_low_rank(in[0], w, in[3], in[0], in[1], in[2], 1.75f, Precision::F32);
      },
      {param({2, 3, 5}, 1), param({2, 5}, 2), param({4, 2}, 3), param({4}, 4)}, kLinearTol);
  EXPECT_FALSE(w.grad().defined());
}

TEST(Gradcheck, LinearLowRankSeparateInputQuantizedWeight) {
  // The update reads its own input (as with LoRA dropout); the frozen weight is Q8_0.
  Tensor w = Tensor::quantized_from({6, 32}, DType::Q8_0, random_values(6 * 32, 11));
  EXPECT_GRADCHECK(
      [w](const std::vector<Tensor>& in) {
        return linear_low_rank(in[0], w, Tensor(), in[1], in[2], in[3], -0.5f, Precision::F32);
      },
      {param({3, 32}, 1), param({3, 32}, 2), param({3, 32}, 3), param({6, 3}, 4)},
      Tolerance{1e-2, 3e-4, 3e-4});
}

// linear_group: projections of one input, each output's gradient by finite differences of
// the outputs flattened side by side. Terms on x itself (sharing the product and reduction over
// x), a term on its own input (as with dropout), a plain projection with a bias, a Q8_0 weight;
// and an output left out of the result (its gradient never arrives).
TEST(Gradcheck, LinearGroup) {
  Tensor w0 = random_tensor({4, 32}, 12), w2 = random_tensor({3, 32}, 13);
  Tensor w1 = Tensor::quantized_from({6, 32}, DType::Q8_0, random_values(6 * 32, 14));
  auto group = [=](const std::vector<Tensor>& in, bool all) {
    const std::vector<GroupLinear> g = {{w0, in[4], LowRankTerm{in[0], in[2], in[3], 1.75f}},
                                        {w1, Tensor(), LowRankTerm{in[1], in[5], in[6], -0.5f}},
                                        {w2, in[7], std::nullopt},
                                        {w0, Tensor(), LowRankTerm{in[0], in[8], in[9], 0.25f}}};
    const std::vector<Tensor> y = linear_group(in[0], g, Precision::F32);
    std::vector<Tensor> flat;
    for (size_t i = 0; i < y.size(); ++i)
      if (all || i != 2) flat.push_back(reshape(y[i], {-1}));
    return concat(flat, 0);
  };
  const std::vector<Tensor> inputs = {param({3, 32}, 1), param({3, 32}, 2), param({2, 32}, 3),
                                      param({4, 2}, 4),  param({4}, 5),     param({3, 32}, 6),
                                      param({6, 3}, 7),  param({3}, 8),     param({1, 32}, 9),
                                      param({4, 1}, 10)};
  const Tolerance tol{1e-2, 3e-4, 3e-4};
  EXPECT_GRADCHECK([=](const std::vector<Tensor>& in) { return group(in, true); }, inputs, tol);
  std::vector<Tensor> without_bias = inputs;
  without_bias[7] = random_tensor({3}, 8);  // the left-out output's bias: frozen, no gradient
  EXPECT_GRADCHECK([=](const std::vector<Tensor>& in) { return group(in, false); }, without_bias,
                   tol);
  // A frozen A on the term with its own input: the gradient still reaches that input.
  std::vector<Tensor> frozen_a = inputs;
  frozen_a[5] = random_tensor({3, 32}, 6);
  EXPECT_GRADCHECK([=](const std::vector<Tensor>& in) { return group(in, true); }, frozen_a, tol);
}

TEST(Gradcheck, Matmul) {
  auto mm = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  EXPECT_GRADCHECK(mm, {param({3, 4}, 1), param({4, 5}, 2)}, kLinearTol);
  EXPECT_GRADCHECK(mm, {param({2, 3, 4}, 3), param({2, 4, 2}, 4)}, kLinearTol);
  EXPECT_GRADCHECK(mm, {param({2, 3, 4}, 5), param({4, 2}, 6)}, kLinearTol);  // b shared
  EXPECT_GRADCHECK(mm, {param({3, 4}, 7), param({2, 4, 2}, 8)}, kLinearTol);  // a shared
  // Transposed views go to BLAS as transposed operands.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return matmul(transpose(in[0], -1, -2), transpose(in[1], 0, 1)); },
                   {param({2, 4, 3}, 9), param({5, 4}, 10)}, kLinearTol);
}

// ---- embedding -------------------------------------------------------------------------------

TEST(Gradcheck, EmbeddingTrainableTable) {
  const std::vector<int32_t> ids = {3, 0, 3, 5, 1, 3};  // repeated ids accumulate
  EXPECT_GRADCHECK([ids](const std::vector<Tensor>& in) { return embedding(in[0], ids, {2, 3}); },
                   {param({6, 4}, 1)}, kLinearTol);
}

// ---- normalization ---------------------------------------------------------------------------

TEST(Gradcheck, RmsNormTrainableWeight) {
  // Inputs away from zero norm; eps 1e-5 like Llama's.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1], 1e-5f); },
                   {param({2, 3, 8}, 1), param({8}, 2, 0.5f, 1.5f)}, kSmoothTol);
}

TEST(Gradcheck, RmsNormFrozenWeightNonContiguousInput) {
  Tensor w = random_tensor({4}, 3, 0.5f, 1.5f);
  EXPECT_GRADCHECK([w](const std::vector<Tensor>& in) { return rms_norm(transpose(in[0], 0, 1), w, 1e-6f); },
                   {param({4, 5}, 1)}, kSmoothTol);
}

// ---- rope ------------------------------------------------------------------------------------

void check_rope(RopeStyle style, bool llama3, int64_t rotary_dim, bool per_batch_positions) {
  SCOPED_TRACE(std::string(style == RopeStyle::Half ? "half" : "interleaved") + (llama3 ? " llama3" : "") +
               " rotary_dim " + std::to_string(rotary_dim));
  RopeConfig cfg;
  cfg.theta = 500.0f;
  cfg.style = style;
  cfg.rotary_dim = rotary_dim;
  if (llama3) cfg.llama3_scaling = Llama3RopeScaling{4.0f, 1.0f, 4.0f, 64};
  const int64_t B = 2, T = 3;
  std::vector<int32_t> pos = per_batch_positions ? std::vector<int32_t>{0, 1, 2, 0, 1, 57}
                                                 : std::vector<int32_t>{5, 6, 90};
  EXPECT_GRADCHECK([cfg, pos](const std::vector<Tensor>& in) { return rope(in[0], pos, cfg); },
                   {param({B, T, 2, 8}, 1)}, kLinearTol);
}

TEST(Gradcheck, RopeBothStylesWithAndWithoutLlama3Scaling) {
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Half})
    for (bool llama3 : {false, true}) check_rope(style, llama3, 0, false);
  check_rope(RopeStyle::Half, false, 4, true);        // partial rotary, per-batch positions
  check_rope(RopeStyle::Interleaved, true, 6, true);
}

// ---- attention -------------------------------------------------------------------------------

// Attention is smooth; scores stay small for inputs in [-1, 1], so kSmoothTol holds.
void check_attention(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, AttentionOptions opt,
                     const std::vector<int32_t>& docs, uint64_t seed) {
  EXPECT_GRADCHECK(
      [opt, docs](const std::vector<Tensor>& in) {
        AttentionOptions o = opt;
        o.document_ids = docs;
        return attention(in[0], in[1], in[2], o);
      },
      {param({B, T, Hq, D}, seed), param({B, T, Hkv, D}, seed + 1), param({B, T, Hkv, D}, seed + 2)},
      kSmoothTol);
}

TEST(Gradcheck, AttentionCausalGqa) {
  check_attention(2, 5, 6, 2, 4, {}, {}, 1);  // Hq / Hkv = 3
}

TEST(Gradcheck, AttentionCausalWithDocumentMask) {
  // Per-batch document ids: packed sequences, including a document id reused non-adjacently.
  check_attention(2, 6, 3, 1, 4, {}, {0, 0, 1, 1, 1, 2, 7, 7, 7, 8, 7, 8}, 2);
  // Shared over the batch (T entries).
  check_attention(2, 6, 2, 2, 3, {}, {4, 4, 4, 9, 9, 9}, 3);
}

TEST(Gradcheck, AttentionNonCausalAndCustomScale) {
  AttentionOptions opt;
  opt.causal = false;
  opt.scale = 0.7f;
  check_attention(1, 5, 4, 2, 3, opt, {}, 4);
  check_attention(1, 5, 2, 1, 3, opt, {1, 1, 2, 2, 2}, 5);
}

TEST(Gradcheck, AttentionSeveralQueryBlocks) {
  // T above the 64-row query block: blocks with different causal / document key ranges.
  std::vector<int32_t> docs(70);
  for (int64_t t = 0; t < 70; ++t) docs[static_cast<size_t>(t)] = t < 30 ? 0 : (t < 66 ? 1 : 2);
  check_attention(1, 70, 3, 1, 2, {}, docs, 6);
}

// ---- activations and dropout -----------------------------------------------------------------

TEST(Gradcheck, Silu) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return silu(in[0]); }, {param({3, 5}, 1, -4, 4)},
                   kSmoothTol);
}

TEST(Gradcheck, Swiglu) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return swiglu(in[0], in[1]); },
                   {param({3, 5}, 1, -4, 4), param({3, 5}, 2)}, kSmoothTol);
}

TEST(Gradcheck, DropoutFixedSeed) {
  // Linear in x for a fixed mask; the finite differences reuse the seed, so the same mask.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return dropout(in[0], 0.3f, 1234); },
                   {param({4, 6}, 1)}, kLinearTol);
}

// ---- cross-entropy ---------------------------------------------------------------------------

// The loss is a mean over few rows of smooth functions; gradients are O(1/N), so a small atol.
constexpr Tolerance kCeTol{3e-3, 1e-4, 2e-3};

TEST(Gradcheck, CrossEntropyTrainableWeightIgnoreIndexOddChunks) {
  // N = 10 rows, chunk 3 (does not divide the 7 counted rows), 3 ignored.
  const std::vector<int32_t> targets = {2, -100, 0, 6, 6, -100, 1, 3, -100, 5};
  EXPECT_GRADCHECK(
      [targets](const std::vector<Tensor>& in) {
        CrossEntropyOptions opt;
        opt.chunk_rows = 3;
        opt.precision = Precision::F32;
        return cross_entropy_chunked(in[0], in[1], targets, opt).loss;
      },
      {param({10, 4}, 1), param({7, 4}, 2)}, kCeTol);
}

TEST(Gradcheck, CrossEntropyFrozenQuantizedWeight3dHidden) {
  Tensor w = Tensor::quantized_from({9, 32}, DType::Q8_0, random_values(9 * 32, 5));
  const std::vector<int32_t> targets = {8, 0, -1, 4, 4, 2};
  EXPECT_GRADCHECK(
      [w, targets](const std::vector<Tensor>& in) {
        CrossEntropyOptions opt;
        opt.chunk_rows = 4;
        opt.ignore_index = -1;
        opt.precision = Precision::F32;
        return cross_entropy_chunked(in[0], w, targets, opt).loss;
      },
      {param({2, 3, 32}, 1, -0.3f, 0.3f)}, kCeTol);
}

TEST(Gradcheck, CrossEntropyLowRankTermSharedInput) {
  // LoRA on the LM head: logits = h W^T + s (h A^T) B^T with a frozen Q8_0 W; dH sums both
  // paths; dA, dB checked; chunk 3 over 7 counted rows, 3 ignored.
  Tensor w = Tensor::quantized_from({7, 32}, DType::Q8_0, random_values(7 * 32, 5));
  const std::vector<int32_t> targets = {2, -100, 0, 6, 6, -100, 1, 3, -100, 5};
  EXPECT_GRADCHECK(
      [w, targets](const std::vector<Tensor>& in) {
        CrossEntropyOptions opt;
        opt.chunk_rows = 3;
        opt.precision = Precision::F32;
        opt.low_rank = LowRankTerm{in[0], in[1], in[2], 1.5f};
        return cross_entropy_chunked(in[0], w, targets, opt).loss;
      },
      {param({2, 5, 32}, 1, -0.3f, 0.3f), param({3, 32}, 2), param({7, 3}, 3)}, kCeTol);
}

TEST(Gradcheck, CrossEntropyLowRankTermSeparateInputTrainableWeight) {
  // The low-rank input is its own tensor (as dropout(h) is): its gradient goes to it alone.
  const std::vector<int32_t> targets = {4, 0, -100, 3, 1, 1};
  EXPECT_GRADCHECK(
      [targets](const std::vector<Tensor>& in) {
        CrossEntropyOptions opt;
        opt.chunk_rows = 4;
        opt.precision = Precision::F32;
        opt.low_rank = LowRankTerm{in[2], in[3], in[4], -0.75f};
        return cross_entropy_chunked(in[0], in[1], targets, opt).loss;
      },
      {param({6, 4}, 1), param({5, 4}, 2), param({6, 4}, 3), param({2, 4}, 4), param({5, 2}, 5)},
      kCeTol);
}

TEST(Gradcheck, CrossEntropyLowRankTermEqualsTheFullLogits) {
  // The chunked loss with the term equals log-softmax of linear_low_rank's full logits, and its
  // gradients equal those through that composition (an independent path: full logits, then
  // log_softmax and a pick).
  const int64_t N = 9, V = 11, D = 8, R = 3;
  const std::vector<int32_t> targets = {3, 10, -100, 0, 7, 7, 2, -100, 5};
  Tensor w = random_tensor({V, D}, 1);
  auto run = [&](bool chunked) {
    Tensor h = param({N, D}, 2), a = param({R, D}, 3), b = param({V, R}, 4);
    Tensor loss;
    if (chunked) {
      CrossEntropyOptions opt;
      opt.chunk_rows = 2;
      opt.precision = Precision::F32;
      opt.low_rank = LowRankTerm{h, a, b, 0.5f};
      loss = cross_entropy_chunked(h, w, targets, opt).loss;
    } else {
      const Tensor logp =
          log_softmax(linear_low_rank(h, w, Tensor(), h, a, b, 0.5f, Precision::F32));
      std::vector<float> pick(static_cast<size_t>(N * V), 0.0f);
      int64_t count = 0;
      for (int64_t i = 0; i < N; ++i)
        if (targets[i] >= 0) {
          pick[i * V + targets[i]] = 1.0f;
          ++count;
        }
      loss = scale(sum(mul(logp, Tensor::from_vector({N, V}, pick))), -1.0f / count);
    }
    loss.backward();
    return std::vector<std::vector<float>>{
        {loss.item()}, h.grad().to_vector(), a.grad().to_vector(), b.grad().to_vector()};
  };
  const auto got = run(true), want = run(false);
  const char* names[] = {"loss", "dh", "da", "db"};
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].size(), want[i].size()) << names[i];
    for (size_t j = 0; j < got[i].size(); ++j)
      EXPECT_NEAR(got[i][j], want[i][j], 1e-6 + 1e-5 * std::fabs(want[i][j]))
          << names[i] << "[" << j << "]";
  }
}

TEST(Gradcheck, CrossEntropyAllIgnoredGivesZeroLossAndZeroGradients) {
  Tensor h = param({3, 4}, 1), w = param({5, 4}, 2);
  CrossEntropyResult r = cross_entropy_chunked(h, w, std::vector<int32_t>{-100, -100, -100});
  EXPECT_EQ(r.n_tokens, 0);
  EXPECT_EQ(r.loss.item(), 0.0f);
  r.loss.backward();
  for (const Tensor& t : {h, w}) {
    ASSERT_TRUE(t.grad().defined());
    for (float g : t.grad().to_vector()) EXPECT_EQ(g, 0.0f);
  }
}

// ---- threads ---------------------------------------------------------------------------------

// The finite-difference checks above use small tensors, which run on one thread. Here shapes
// large enough for the parallel paths must give the same gradients on one thread and on all
// (same math, split differently: only reduction order may differ).
TEST(Gradcheck, GradientsAreTheSameOnOneThreadAndOnAll) {
  // Each op below handles at least 32768 elements (kParallelMinElements) at once.
  std::vector<Tensor> leaves = {param({2, 128, 8, 16}, 1), param({2, 128, 2, 16}, 2),
                                param({2, 128, 2, 16}, 3), param({128, 128}, 4),
                                param({128}, 5, 0.5f, 1.5f), param({400, 128}, 6, -0.2f, 0.2f),
                                param({128}, 7)};
  std::vector<int32_t> pos(128), targets(2 * 128), docs(2 * 128), targets_in(2 * 128);
  for (int32_t t = 0; t < 128; ++t) pos[t] = t;
  for (int32_t i = 0; i < 256; ++i) {
    targets[i] = i % 7 == 3 ? -100 : (i * 31) % 400;
    docs[i] = i / 50;
    targets_in[i] = (i * 7) % 400;
  }
  auto run = [&]() {
    for (Tensor t : leaves) t.zero_grad();
    const Tensor &q = leaves[0], &k = leaves[1], &v = leaves[2], &w = leaves[3], &nw = leaves[4],
                 &head = leaves[5], &bias = leaves[6];
    RopeConfig rc;
    AttentionOptions ao;
    ao.document_ids = docs;
    Tensor a = attention(rope(q, pos, rc), rope(k, pos, rc), v, ao);   // [2,128,8,16]
    Tensor h = rms_norm(reshape(a, {2, 128, 128}), nw, 1e-5f);          // [2,128,128]
    Tensor m = linear(swiglu(h, dropout(h, 0.1f, 5)), w, bias, Precision::F32);  // [2,128,128]
    m = add(m, embedding(head, targets_in, {2, 128}));  // tied with the CE weight
    CrossEntropyOptions co;
    co.chunk_rows = 100;
    co.precision = Precision::F32;
    cross_entropy_chunked(m, head, targets, co).loss.backward();
    std::vector<std::vector<float>> grads;
    for (const Tensor& t : leaves) grads.push_back(t.grad().to_vector());
    return grads;
  };
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run();
  omp_set_num_threads(threads);
  const auto all = run();
  for (size_t i = 0; i < one.size(); ++i)
    for (size_t j = 0; j < one[i].size(); ++j)
      ASSERT_NEAR(one[i][j], all[i][j], 1e-5f * (1.0f + std::abs(one[i][j]))) << "leaf " << i << " element " << j;
}

// ---- tape behaviour --------------------------------------------------------------------------

// A small block: rms_norm -> linear (closed-over trainable W) -> swiglu -> linear.
Tensor block_fn(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down,
                const Tensor& norm_w) {
  Tensor h = rms_norm(x, norm_w, 1e-5f);
  Tensor y = swiglu(linear(h, w_gate, Tensor(), Precision::F32), linear(h, w_up, Tensor(), Precision::F32));
  return add(x, dropout(linear(y, w_down, Tensor(), Precision::F32), 0.2f, 99));
}

TEST(Gradcheck, CheckpointMatchesPlainBackwardIncludingClosedOverParameters) {
  Tensor norm_w = param({6}, 1, 0.5f, 1.5f), wg = param({8, 6}, 2), wu = param({8, 6}, 3),
         wd = param({6, 8}, 4);
  const std::vector<Tensor> params = {norm_w, wg, wu, wd};
  Tensor x0 = param({2, 3, 6}, 5);
  const std::vector<float> r = random_values(2 * 3 * 6, 6);

  auto run = [&](bool use_checkpoint) {
    for (Tensor p : params) p.zero_grad();
    x0.zero_grad();
    Tensor pre = scale(x0, 1.5f);  // a non-leaf input to the checkpointed block
    Tensor out = use_checkpoint
                     ? checkpoint([&](const std::vector<Tensor>& in) { return block_fn(in[0], wg, wu, wd, norm_w); },
                                  {pre})
                     : block_fn(pre, wg, wu, wd, norm_w);
    out.backward(Tensor::from_vector(out.shape(), r));
    std::vector<std::vector<float>> grads;
    for (const Tensor& p : params) grads.push_back(p.grad().to_vector());
    grads.push_back(x0.grad().to_vector());
    return grads;
  };
  const auto plain = run(false);
  const auto ckpt = run(true);
  ASSERT_EQ(plain.size(), ckpt.size());
  for (size_t i = 0; i < plain.size(); ++i)
    for (size_t j = 0; j < plain[i].size(); ++j)
      EXPECT_NEAR(plain[i][j], ckpt[i][j], 1e-6f * (1.0f + std::abs(plain[i][j]))) << "tensor " << i;

  // And the checkpointed block's gradients are right, by finite differences.
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) {
        return checkpoint(
            [in](const std::vector<Tensor>& x) { return block_fn(x[0], in[1], in[2], in[3], in[4]); }, {in[0]});
      },
      {param({1, 2, 6}, 7), param({8, 6}, 8), param({8, 6}, 9), param({6, 8}, 10), param({6}, 11, 0.5f, 1.5f)},
      kSmoothTol);
}

TEST(Gradcheck, GradientsAccumulateOverTwoBackwardCalls) {
  Tensor w = param({3, 4}, 1);
  Tensor x1 = random_tensor({2, 4}, 2), x2 = random_tensor({5, 4}, 3);
  sum(linear(x1, w, Tensor(), Precision::F32)).backward();
  const std::vector<float> g1 = w.grad().to_vector();
  w.zero_grad();
  sum(linear(x2, w, Tensor(), Precision::F32)).backward();
  const std::vector<float> g2 = w.grad().to_vector();
  w.zero_grad();
  sum(linear(x1, w, Tensor(), Precision::F32)).backward();
  sum(linear(x2, w, Tensor(), Precision::F32)).backward();
  const std::vector<float> both = w.grad().to_vector();
  for (size_t i = 0; i < both.size(); ++i) EXPECT_NEAR(both[i], g1[i] + g2[i], 1e-5f);
}

TEST(Gradcheck, NoGradScopeRecordsNothing) {
  Tensor w = param({3, 4}, 1), b = param({3}, 2), x = param({2, 4}, 3);
  {
    NoGradGuard no_grad;
    Tensor y = rms_norm(linear(x, w, b, Precision::F32), b, 1e-5f);
    Tensor z = attention(reshape(y, {1, 2, 3, 1}), reshape(y, {1, 2, 3, 1}), reshape(y, {1, 2, 3, 1}));
    Tensor loss = sum(mul(z, z));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_FALSE(y.grad_fn());
    EXPECT_FALSE(z.grad_fn());
    EXPECT_FALSE(loss.requires_grad());
    EXPECT_THROW(loss.backward(), Error);
  }
  Tensor y = linear(x, w, b, Precision::F32);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_TRUE(y.grad_fn());
}

}  // namespace
}  // namespace loom
