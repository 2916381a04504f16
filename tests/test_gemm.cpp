// Parity of the linear-layer GEMM (autograd/kernels/gemm.h) against its scalar reference, for
// every weight storage dtype, both compute precisions, both products (Y = X.W^T, dX = dY.W),
// odd M, tiles that do not divide N, leading dimensions wider than the rows, and accumulate.
//
// Tolerances come from the precision, per output element, with L2 = sqrt(sum_k (x_k w_k)^2)
// over the reduction (about sqrt(K) times the typical product):
//   BF16: each of x and w is rounded to bf16 (relative error <= 2^-9 each, so <= 2^-8 per
//         product); the errors are independent with random sign, so the sum's error has a
//         standard deviation of about 0.4 * 2^-8 * L2 -- the "sqrt(K) * 2^-8" relative scale.
//         We allow 4 * 2^-8 * L2 (about 10 sigma).
//   F32:  only the f32 accumulation rounds: error about 2^-24 * sqrt(K / 6) * L2 for a
//         sequential sum (blocked GEMMs do better). We allow 8 * 2^-24 * sqrt(K) * L2.
// plus 2^-20 * |expected| for the final f32 rounding (and the add when accumulating).
// The Checker* tests show these bounds reject a transposed weight, a missing tile, a missing
// K block and (for F32) a product computed in bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/kernels/gemm.h"
#include "autograd/kernels/gemm_internal.h"
#include "autograd/kernels/skinny.h"
#include "autograd/kernels/tile_gemm.h"
#include "autograd/ops/vec_kernels.h"
#include "autograd/quant/quant.h"

namespace loom {
namespace {

constexpr float kOutputPad = 12345.0f;  // output padding must come back untouched

// Reduction lengths: a few blocks of each format, never a multiple of oneDNN's 64/128 K tile
// except where the block size forces it.
int64_t test_k(DType t) {
  switch (t) {
    case DType::F32:
    case DType::BF16:
    case DType::F16: return 100;
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_1: return 160;  // 5 blocks of 32
    case DType::NF4: return 192;   // 3 blocks of 64
    case DType::Q4_K:
    case DType::Q6_K: return 512;  // 2 super-blocks of 256
  }
  return 0;
}

// An [rows x width] f32 matrix with row stride ld; the padding holds `pad`.
std::vector<float> random_matrix(std::mt19937& rng, int64_t rows, int64_t width, int64_t ld,
                                 float scale, float pad) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> a(static_cast<size_t>(rows * ld), pad);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c) a[r * ld + c] = dist(rng);
  return a;
}

// A frozen weight: its stored bytes and its exact f32 values (the reference dequantization).
struct TestWeight {
  DType dtype;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  WeightView view() const { return {dtype, bytes.data(), rows, cols}; }
};

TestWeight make_weight(std::mt19937& rng, DType dtype, int64_t N, int64_t K) {
  const std::vector<float> w = random_matrix(rng, N, K, K, 0.05f, 0.0f);
  TestWeight tw{dtype, N, K, quantize(dtype, w.data(), N * K), {}};
  tw.values.resize(static_cast<size_t>(N * K));
  ref::dequantize(dtype, tw.bytes.data(), N * K, 0, N * K, tw.values.data());
  return tw;
}

TestWeight from_values(const std::vector<float>& values, int64_t N, int64_t K) {
  TestWeight tw{DType::F32, N, K, std::vector<uint8_t>(values.size() * sizeof(float)), values};
  std::copy_n(reinterpret_cast<const uint8_t*>(values.data()), tw.bytes.size(), tw.bytes.begin());
  return tw;
}

std::vector<float> squared(const std::vector<float>& a) {
  std::vector<float> s(a.size());
  for (size_t i = 0; i < a.size(); ++i) s[i] = std::isfinite(a[i]) ? a[i] * a[i] : 0.0f;
  return s;
}

enum class Product { Forward, BackwardInput };

// One product's shapes: input [M x in_width] (ld_in), output [M x out_width] (ld_out).
struct Case {
  Product product;
  int64_t M;
  int64_t ld_pad;  // extra elements per row on input and output
  bool accumulate;
  int64_t tile_rows;
};

struct Shapes {
  int64_t in_width, out_width, reduction, ld_in, ld_out;
};

Shapes shapes_of(const Case& c, const TestWeight& w) {
  const bool fwd = c.product == Product::Forward;
  const int64_t in = fwd ? w.cols : w.rows, out = fwd ? w.rows : w.cols;
  return {in, out, in, in + c.ld_pad, out + 2 * c.ld_pad};
}

void run_kernel(const Case& c, const float* in, int64_t ld_in, const TestWeight& w, float* out,
                int64_t ld_out, Precision p) {
  if (c.product == Product::Forward)
    detail::linear_forward_tiled(in, c.M, ld_in, w.view(), out, ld_out, c.accumulate, p,
                                 c.tile_rows);
  else
    detail::linear_backward_input_tiled(in, c.M, ld_in, w.view(), out, ld_out, c.accumulate, p,
                                        c.tile_rows);
}

void run_ref(Product product, int64_t M, const float* in, int64_t ld_in, const TestWeight& w,
             float* out, int64_t ld_out, bool accumulate) {
  const WeightView v{DType::F32, w.values.data(), w.rows, w.cols};
  if (product == Product::Forward)
    ref::linear_forward(in, M, ld_in, v, out, ld_out, accumulate);
  else
    ref::linear_backward_input(in, M, ld_in, v, out, ld_out, accumulate);
}

// Per-element tolerance coefficient on L2 (see the file comment).
double l2_coefficient(Precision resolved, int64_t reduction) {
  if (resolved == Precision::BF16) return 4.0 * std::ldexp(1.0, -8);
  return 8.0 * std::ldexp(1.0, -24) * std::sqrt(double(reduction));
}

struct Comparison {
  int64_t bad = 0, pad_touched = 0;
  std::string first;  // description of the first mismatch
};

Comparison compare(const std::vector<float>& got, const std::vector<float>& want,
                   const std::vector<float>& l2sq, int64_t M, int64_t width, int64_t ld,
                   double coef) {
  Comparison r;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < ld; ++j) {
      const size_t i = static_cast<size_t>(m * ld + j);
      if (j >= width) {
        if (got[i] != kOutputPad) ++r.pad_touched;
        continue;
      }
      const double tol = coef * std::sqrt(double(l2sq[i])) + std::ldexp(std::fabs(want[i]), -20);
      const double err = std::fabs(double(got[i]) - double(want[i]));
      if (!(err <= tol)) {  // NaN fails too
        if (r.bad++ == 0)
          r.first = "element [" + std::to_string(m) + ", " + std::to_string(j) + "]: got " +
                    std::to_string(got[i]) + ", want " + std::to_string(want[i]) + ", |err| " +
                    std::to_string(err) + " > tol " + std::to_string(tol);
      }
    }
  return r;
}

// Everything one parity check needs, made once per case.
struct Fixture {
  Shapes s;
  std::vector<float> in, out0, want, l2sq;
};

Fixture make_fixture(std::mt19937& rng, const Case& c, const TestWeight& w) {
  Fixture f;
  f.s = shapes_of(c, w);
  // NaN in the input padding: a kernel that reads past a row poisons its result.
  f.in = random_matrix(rng, c.M, f.s.in_width, f.s.ld_in, 1.0f,
                       std::numeric_limits<float>::quiet_NaN());
  f.out0 = c.accumulate ? random_matrix(rng, c.M, f.s.out_width, f.s.ld_out, 1.0f, kOutputPad)
                        : std::vector<float>(static_cast<size_t>(c.M * f.s.ld_out), kOutputPad);
  if (!c.accumulate)  // the kernel must overwrite, not add to, what was there
    for (int64_t m = 0; m < c.M; ++m)
      std::fill_n(f.out0.begin() + m * f.s.ld_out, f.s.out_width, 777.0f);
  f.want = f.out0;
  run_ref(c.product, c.M, f.in.data(), f.s.ld_in, w, f.want.data(), f.s.ld_out, c.accumulate);
  // L2^2 = (in o in) . (W o W) over the reduction, by the same reference.
  const TestWeight w2 = from_values(squared(w.values), w.rows, w.cols);
  const std::vector<float> in2 = squared(f.in);
  f.l2sq.assign(f.out0.size(), 0.0f);
  run_ref(c.product, c.M, in2.data(), f.s.ld_in, w2, f.l2sq.data(), f.s.ld_out, false);
  return f;
}

std::string describe(const Case& c, DType t, Precision p) {
  return std::string(c.product == Product::Forward ? "forward" : "backward_input") + " W=" +
         std::string(dtype_name(t)) + (p == Precision::F32 ? " F32" : " BF16") +
         " M=" + std::to_string(c.M) + " ld_pad=" + std::to_string(c.ld_pad) +
         " accumulate=" + (c.accumulate ? "true" : "false") +
         " tile_rows=" + std::to_string(c.tile_rows);
}

using Param = std::tuple<DType, Precision>;

// Every combination of product, M, padding, accumulate and tile height; returns cases run.
int check_cases(std::mt19937& rng, const TestWeight& w, Precision precision,
                std::initializer_list<int64_t> Ms, std::initializer_list<int64_t> tiles) {
  const Precision resolved = resolve_precision(precision);
  int checked = 0;
  for (Product product : {Product::Forward, Product::BackwardInput})
    for (int64_t M : Ms)
      for (int64_t ld_pad : {0, 3})
        for (bool accumulate : {false, true})
          for (int64_t tile_rows : tiles) {
            const Case c{product, M, ld_pad, accumulate, tile_rows};
            SCOPED_TRACE(describe(c, w.dtype, precision));
            Fixture f = make_fixture(rng, c, w);
            std::vector<float> got = f.out0;
            run_kernel(c, f.in.data(), f.s.ld_in, w, got.data(), f.s.ld_out, precision);
            const Comparison r = compare(got, f.want, f.l2sq, M, f.s.out_width, f.s.ld_out,
                                         l2_coefficient(resolved, f.s.reduction));
            EXPECT_EQ(r.bad, 0) << r.bad << " elements out of tolerance; first: " << r.first;
            EXPECT_EQ(r.pad_touched, 0) << "output padding was written";
            ++checked;
          }
  return checked;
}

class GemmParity : public ::testing::TestWithParam<Param> {};

TEST_P(GemmParity, MatchesReference) {
  const auto [dtype, precision] = GetParam();
  std::mt19937 rng(1234 + static_cast<int>(dtype) * 7 + static_cast<int>(precision));
  // N = 130: with tile_rows 48 the tiles are 48, 48, 34; with 0 one default tile.
  const TestWeight w = make_weight(rng, dtype, 130, test_k(dtype));
  EXPECT_EQ(check_cases(rng, w, precision, {1, 7, 130}, {0, 48}), 2 * 3 * 2 * 2 * 2);
}

// One row of activations (a decoded token) against a weight large enough that each tile is split
// over the threads: on the f32 route each thread dequantizes its share of the tile's rows and
// multiplies it with sgemv (gemm_f32.cpp). N = 300 with tiles of 128 rows: 128, 128, 44.
TEST_P(GemmParity, OneRowWithTilesSplitOverThreads) {
  const auto [dtype, precision] = GetParam();
  std::mt19937 rng(4321 + static_cast<int>(dtype) * 7 + static_cast<int>(precision));
  const int64_t K = 3 * test_k(dtype);  // 128 rows x K >= 2^14 elements: split over the threads
  const TestWeight w = make_weight(rng, dtype, 300, K);
  EXPECT_EQ(check_cases(rng, w, precision, {1}, {0, 128}), 2 * 1 * 2 * 2 * 2);
}

// Square weights: a transposed read of W is shape-consistent only here, so it would go unnoticed
// by the other cases (which would fail on shapes alone).
TEST(Gemm, SquareWeights) {
  std::mt19937 rng(66);
  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::NF4})
    for (Precision p : {Precision::F32, Precision::BF16}) {
      const TestWeight w = make_weight(rng, dtype, 192, 192);
      EXPECT_EQ(check_cases(rng, w, p, {7}, {0, 80}), 2 * 1 * 2 * 2 * 2);
    }
}

// A weight is a flat run of blocks, so a block may straddle two rows when K is not a multiple of
// the block size (Q4_K at K = 576 in SmolLM2). Tiles must then start on whole blocks: K = 320
// gives 4-row units for Q4_K (tile_rows 6 becomes 8: tiles 8, 8, 4), K = 96 2-row units for NF4.
// One row (decoding) cannot take the row kernel there (its rows are not whole blocks).
TEST(Gemm, BlocksStraddlingRows) {
  std::mt19937 rng(77);
  const TestWeight q4k = make_weight(rng, DType::Q4_K, 20, 320);
  const TestWeight nf4 = make_weight(rng, DType::NF4, 30, 96);
  EXPECT_EQ(detail::row_granularity(q4k.view()), 4);
  EXPECT_EQ(detail::effective_tile_rows(q4k.view(), 6), 8);
  EXPECT_EQ(detail::row_granularity(nf4.view()), 2);
  for (Precision p : {Precision::F32, Precision::BF16}) {
    EXPECT_EQ(check_cases(rng, q4k, p, {1, 7, 33}, {0, 6}), 2 * 3 * 2 * 2 * 2);
    EXPECT_EQ(check_cases(rng, nf4, p, {1, 7, 33}, {0, 5}), 2 * 3 * 2 * 2 * 2);
  }
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const auto [dtype, precision] = info.param;
  return std::string(dtype_name(dtype)) + (precision == Precision::F32 ? "_F32" : "_BF16");
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, GemmParity,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16,
                                                              DType::F16, DType::NF4,
                                                              DType::Q8_0, DType::Q4_0,
                                                              DType::Q4_1, DType::Q4_K,
                                                              DType::Q6_K),
                                            ::testing::Values(Precision::F32, Precision::BF16)),
                         param_name);

// SmolLM2-135M's MLP shape through the public API with the default tiles (K=576 gives tiles of
// 896 rows, so N=1536 is one full tile and a partial one; on AMX CPUs, one tile of 1536 rows,
// and 4096 rows -- more than 2^21 elements -- take tiles of 896).
TEST(Gemm, DefaultTilesOnModelShape) {
  std::mt19937 rng(99);
  const int64_t N = detail::onednn_uses_amx() ? 4096 : 1536;
  if (detail::onednn_uses_amx()) {
    EXPECT_EQ(detail::default_tile_rows(make_weight(rng, DType::NF4, 1536, 576).view()), 1536);
  }
  for (DType dtype : {DType::NF4, DType::Q4_K, DType::BF16}) {
    const TestWeight w = make_weight(rng, dtype, N, 576);
    EXPECT_GT(N, detail::default_tile_rows(w.view()));
    EXPECT_NE(N % detail::default_tile_rows(w.view()), 0);  // a partial tile at the end
    for (Product product : {Product::Forward, Product::BackwardInput}) {
      const Case c{product, 33, 0, false, 0};
      SCOPED_TRACE(describe(c, dtype, Precision::Auto));
      Fixture f = make_fixture(rng, c, w);
      std::vector<float> got = f.out0;
      if (product == Product::Forward)
        linear_forward(f.in.data(), c.M, f.s.ld_in, w.view(), got.data(), f.s.ld_out, false);
      else
        linear_backward_input(f.in.data(), c.M, f.s.ld_in, w.view(), got.data(), f.s.ld_out,
                              false);
      const Comparison r = compare(got, f.want, f.l2sq, c.M, f.s.out_width, f.s.ld_out,
                                   l2_coefficient(resolve_precision(Precision::Auto), f.s.reduction));
      EXPECT_EQ(r.bad, 0) << r.first;
    }
  }
}

// A low-rank term's operands for one Case: act [M x R] (U or T; row stride R + 2, NaN in the
// padding) and its factor (forward: B [N x R]; input gradient: A [R x K]).
struct Term {
  int64_t R = 0, ld_act = 0;
  std::vector<float> act, factor;
};

Term make_term(std::mt19937& rng, const Case& c, const TestWeight& w, int64_t R) {
  Term t{R, R + 2, {}, {}};
  t.act = random_matrix(rng, c.M, R, t.ld_act, 1.0f, std::numeric_limits<float>::quiet_NaN());
  t.factor = c.product == Product::Forward ? random_matrix(rng, w.rows, R, R, 0.05f, 0.0f)
                                           : random_matrix(rng, R, w.cols, w.cols, 0.05f, 0.0f);
  return t;
}

// want += scale * act . factor (B^T forward, A input gradient) in double, l2sq += its products'
// squares; act and factor laid out as t's.
void add_term(const Case& c, const Term& t, const std::vector<float>& act,
              const std::vector<float>& factor, float scale, const Shapes& s,
              std::vector<float>& want, std::vector<float>& l2sq) {
  const bool fwd = c.product == Product::Forward;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t j = 0; j < s.out_width; ++j) {
      double term = 0, sq = 0;
      for (int64_t r = 0; r < t.R; ++r) {
        const double prod = double(act[m * t.ld_act + r]) *
                            double(fwd ? factor[j * t.R + r] : factor[r * s.out_width + j]);
        term += prod;
        sq += prod * prod;
      }
      const size_t i = static_cast<size_t>(m * s.ld_out + j);
      want[i] = static_cast<float>(double(want[i]) + scale * term);
      l2sq[i] += static_cast<float>(double(scale) * scale * sq);
    }
}

// The kernel's product with t's term at scale s, compared with want (bound coef).
Comparison run_term(const Case& c, const TestWeight& w, const Fixture& f, const Term& t, float s,
                    Precision p, const std::vector<float>& want, const std::vector<float>& l2sq,
                    double coef) {
  std::vector<float> got = f.out0;
  const detail::LowRank lr{t.act.data(), t.ld_act, t.factor.data(), t.R, s};
  if (c.product == Product::Forward)
    detail::linear_forward_tiled(f.in.data(), c.M, f.s.ld_in, w.view(), got.data(), f.s.ld_out,
                                 c.accumulate, p, c.tile_rows, &lr);
  else
    detail::linear_backward_input_tiled(f.in.data(), c.M, f.s.ld_in, w.view(), got.data(),
                                        f.s.ld_out, c.accumulate, p, c.tile_rows, &lr);
  return compare(got, want, l2sq, c.M, f.s.out_width, f.s.ld_out, coef);
}

// linear_*_low_rank (a LoRA projection): the base product plus scale * act . factor, against the
// scalar reference plus the term in double, for both products and precisions, tiles that do not
// divide N (the input gradient's term rides on the last tile only), accumulate, padded rows, odd
// M and rank, a bf16 weight (copied into tiles once a term rides along) and Q4_K (blocks
// straddling rows, so a tile's rows are spread to the wider row stride after dequantizing). The
// term's products join L2 in the tolerance. Dropping the term (scale 0) must be caught.
TEST(Gemm, LowRankTermMatchesReference) {
  std::mt19937 rng(88);
  const float scale = 1.75f;
  int checked = 0;
  for (DType dtype : {DType::F32, DType::BF16, DType::NF4, DType::Q4_K})
    for (Precision p : {Precision::F32, Precision::BF16}) {
      const TestWeight w = make_weight(rng, dtype, dtype == DType::Q4_K ? 20 : 130,
                                       dtype == DType::Q4_K ? 320 : test_k(dtype));
      for (Product product : {Product::Forward, Product::BackwardInput})
        for (int64_t M : {1, 7, 33})
          for (bool accumulate : {false, true})
            for (int64_t tile_rows : {0, 6}) {
              const Case c{product, M, 3, accumulate, tile_rows};
              SCOPED_TRACE(describe(c, dtype, p));
              Fixture f = make_fixture(rng, c, w);
              const Term t = make_term(rng, c, w, 5);
              add_term(c, t, t.act, t.factor, scale, f.s, f.want, f.l2sq);
              const double coef = l2_coefficient(resolve_precision(p), f.s.reduction + t.R);
              const Comparison r = run_term(c, w, f, t, scale, p, f.want, f.l2sq, coef);
              EXPECT_EQ(r.bad, 0) << r.bad << " elements out of tolerance; first: " << r.first;
              EXPECT_EQ(r.pad_touched, 0) << "output padding was written";
              EXPECT_GT(run_term(c, w, f, t, 0.0f, p, f.want, f.l2sq, coef).bad, 0)
                  << "the checker misses a dropped low-rank term";
              ++checked;
            }
    }
  EXPECT_EQ(checked, 4 * 2 * 2 * 3 * 2 * 2);
}

// v with its finite elements rounded to bf16 (what the bf16 route feeds its products).
std::vector<float> bf16_rounded(std::vector<float> v) {
  for (float& x : v)
    if (std::isfinite(x)) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}

// The bf16 route with a low-rank term against the same double reference fed the operands the
// route rounds (X or dY; W dequantized, then rounded; U or T; scale * B or scale * A): only the
// f32 accumulation differs, so the bound is the f32 one, and the term's scale off by 0.2% fails
// it (the bf16 bound of the test above lets that through; 1% it catches too).
TEST(Gemm, Bf16LowRankTermMatchesRoundedReference) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "SKIPPED: this CPU has no AVX512_BF16";
  std::mt19937 rng(89);
  const float scale = 1.75f;
  int checked = 0;
  for (DType dtype : {DType::F32, DType::BF16, DType::NF4, DType::Q4_K})
    for (Product product : {Product::Forward, Product::BackwardInput})
      for (bool accumulate : {false, true})
        for (int64_t tile_rows : {0, 6}) {
          const Case c{product, 33, 3, accumulate, tile_rows};
          SCOPED_TRACE(describe(c, dtype, Precision::BF16));
          const TestWeight w = make_weight(rng, dtype, dtype == DType::Q4_K ? 20 : 130,
                                           dtype == DType::Q4_K ? 320 : test_k(dtype));
          const Fixture f = make_fixture(rng, c, w);
          const Term t = make_term(rng, c, w, 5);
          std::vector<float> scaled = t.factor;
          for (float& x : scaled) x *= scale;
          std::vector<float> want = f.out0, l2sq = f.l2sq;
          const std::vector<float> in_r = bf16_rounded(f.in);
          run_ref(product, c.M, in_r.data(), f.s.ld_in,
                  from_values(bf16_rounded(w.values), w.rows, w.cols), want.data(), f.s.ld_out,
                  accumulate);
          add_term(c, t, bf16_rounded(t.act), bf16_rounded(scaled), 1.0f, f.s, want, l2sq);
          const double coef = l2_coefficient(Precision::F32, f.s.reduction + t.R);
          const Comparison r = run_term(c, w, f, t, scale, Precision::BF16, want, l2sq, coef);
          EXPECT_EQ(r.bad, 0) << r.bad << " elements out of tolerance; first: " << r.first;
          EXPECT_EQ(r.pad_touched, 0) << "output padding was written";
          EXPECT_GT(run_term(c, w, f, t, scale * 1.002f, Precision::BF16, want, l2sq, coef).bad, 0)
              << "the checker misses a 0.2% error in the term";
          ++checked;
        }
  EXPECT_EQ(checked, 4 * 2 * 2 * 2);
}

// linear_forward_group: weights of several dtypes reading one X, each output with its term in
// its own columns of U (one without a term, a U column no output reads), on both routes, for
// one row (the per-output fallback) and several; against the scalar reference per output.
TEST(Gemm, GroupMatchesReference) {
  std::mt19937 rng(93);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t K = 192, u_cols = 13, ldu = 16;
  struct Member {
    TestWeight w;
    int64_t rank, u_col;
    float scale;
    std::vector<float> B;
  };
  std::vector<Member> members;
  members.push_back({make_weight(rng, DType::NF4, 130, K), 5, 3, 1.75f, {}});
  members.push_back({make_weight(rng, DType::F32, 20, K), 3, 0, -0.5f, {}});
  members.push_back({make_weight(rng, DType::BF16, 40, K), 0, 0, 1.0f, {}});
  members.push_back({make_weight(rng, DType::Q8_0, 24, K), 4, 9, 2.0f, {}});  // column 8 unread
  for (Member& m : members) m.B = random_matrix(rng, m.w.rows, m.rank, m.rank, 0.05f, 0.0f);
  int checked = 0;
  for (Precision p : {Precision::F32, Precision::BF16})
    for (int64_t M : {1, 7, 33}) {
      const int64_t ldx = K + 3;
      const std::vector<float> X = random_matrix(rng, M, K, ldx, 1.0f, nan);
      const std::vector<float> U = random_matrix(rng, M, u_cols, ldu, 1.0f, nan);
      auto run = [&](bool drop_terms) {
        std::vector<std::vector<float>> Y;
        std::vector<GroupProduct> outs;
        for (const Member& m : members) {
          const int64_t N = m.w.rows;
          Y.emplace_back(static_cast<size_t>(M * (N + 2)), kOutputPad);
          for (int64_t r = 0; r < M; ++r) std::fill_n(Y.back().begin() + r * (N + 2), N, 777.0f);
        }
        for (size_t i = 0; i < members.size(); ++i) {
          const Member& m = members[i];
          outs.push_back({m.w.view(), Y[i].data(), m.w.rows + 2, m.rank > 0 ? m.B.data() : nullptr,
                          m.rank, m.u_col, drop_terms ? 0.0f : m.scale});
        }
        linear_forward_group(X.data(), M, ldx, U.data(), ldu, u_cols, outs, p);
        return Y;
      };
      const std::vector<std::vector<float>> got = run(false), dropped = run(true);
      for (size_t i = 0; i < members.size(); ++i) {
        const Member& m = members[i];
        const int64_t N = m.w.rows, ld = N + 2;
        SCOPED_TRACE("output " + std::to_string(i) + " M=" + std::to_string(M) +
                     (p == Precision::F32 ? " F32" : " BF16"));
        std::vector<float> want(static_cast<size_t>(M * ld), kOutputPad), l2sq(want.size(), 0.0f);
        run_ref(Product::Forward, M, X.data(), ldx, m.w, want.data(), ld, false);
        const TestWeight w2 = from_values(squared(m.w.values), N, K);
        const std::vector<float> x2 = squared(X);
        run_ref(Product::Forward, M, x2.data(), ldx, w2, l2sq.data(), ld, false);
        for (int64_t r = 0; r < M; ++r)
          for (int64_t j = 0; j < N; ++j) {
            double term = 0, sq = 0;
            for (int64_t c = 0; c < m.rank; ++c) {
              const double prod = double(U[r * ldu + m.u_col + c]) * m.B[j * m.rank + c];
              term += prod;
              sq += prod * prod;
            }
            const size_t e = static_cast<size_t>(r * ld + j);
            want[e] = static_cast<float>(double(want[e]) + m.scale * term);
            l2sq[e] += static_cast<float>(double(m.scale) * m.scale * sq);
          }
        const double coef = l2_coefficient(resolve_precision(p), K + u_cols);
        const Comparison c = compare(got[i], want, l2sq, M, N, ld, coef);
        EXPECT_EQ(c.bad, 0) << c.bad << " elements out of tolerance; first: " << c.first;
        EXPECT_EQ(c.pad_touched, 0) << "output padding was written";
        if (m.rank > 0) {
          EXPECT_GT(compare(dropped[i], want, l2sq, M, N, ld, coef).bad, 0)
              << "the checker misses a dropped low-rank term";
        }
        ++checked;
      }
    }
  EXPECT_EQ(checked, 2 * 3 * 4);
  // Outputs must read the same X width, and terms must fit U.
  std::vector<float> X(2 * K), U(2 * ldu), Y(2 * 130);
  const GroupProduct a{members[0].w.view(), Y.data(), 130, members[0].B.data(), 5, 10, 1.0f};
  EXPECT_THROW(linear_forward_group(X.data(), 2, K, U.data(), ldu, u_cols, {&a, 1}), Error);
  const TestWeight narrow = make_weight(rng, DType::F32, 4, 100);
  const GroupProduct b{narrow.view(), Y.data(), 4, nullptr, 0, 0, 1.0f};
  const GroupProduct ab[] = {{members[0].w.view(), Y.data(), 130, nullptr, 0, 0, 1.0f}, b};
  EXPECT_THROW(linear_forward_group(X.data(), 2, K, U.data(), ldu, u_cols, ab), Error);
}

// linear_forward_group making U's first columns itself (MadeColumns: u = x A^T for the terms on
// X, on the bf16 route while X's rows are rounded) gives the bits of making them first with
// skinny_product and then running the group: the same U (padding columns included, other terms'
// columns untouched) and the same outputs, on both routes, for one row and for rows in several
// chunks per thread.
TEST(Gemm, GroupMakesItsUColumnsAsSkinnyProductWould) {
  std::mt19937 rng(94);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t K = 192, u_cols = 13, ldu = 16, made_cols = 8;
  const TestWeight w0 = make_weight(rng, DType::NF4, 130, K),
                   w1 = make_weight(rng, DType::F32, 20, K),
                   w2 = make_weight(rng, DType::Q8_0, 24, K);
  const std::vector<float> B0 = random_matrix(rng, 130, 5, 5, 0.05f, 0.0f),
                           B1 = random_matrix(rng, 20, 3, 3, 0.05f, 0.0f),
                           B2 = random_matrix(rng, 24, 4, 4, 0.05f, 0.0f);
  const std::vector<float> F = random_matrix(rng, K, made_cols, made_cols, 0.1f, 0.0f);
  for (Precision p : {Precision::F32, Precision::BF16})
    for (int64_t M : {1, 7, 70}) {
      SCOPED_TRACE("M=" + std::to_string(M) + (p == Precision::F32 ? " F32" : " BF16"));
      const int64_t ldx = K + 3;
      const std::vector<float> X = random_matrix(rng, M, K, ldx, 1.0f, nan);
      const std::vector<float> U0 = random_matrix(rng, M, u_cols, ldu, 1.0f, nan);
      auto run = [&](bool make, std::vector<float>& U) {
        std::vector<float> Y(static_cast<size_t>(M * (130 + 20 + 24)), kOutputPad);
        const GroupProduct outs[] = {{w0.view(), Y.data(), 130, B0.data(), 5, 3, 1.75f},
                                     {w1.view(), Y.data() + M * 130, 20, B1.data(), 3, 0, -0.5f},
                                     {w2.view(), Y.data() + M * 150, 24, B2.data(), 4, 9, 2.0f}};
        if (make) {
          for (int64_t r = 0; r < M; ++r) std::fill_n(U.begin() + r * ldu, made_cols, nan);
          linear_forward_group(X.data(), M, ldx, U.data(), ldu, u_cols, outs, p,
                               MadeColumns{U.data(), F.data(), made_cols});
        } else {
          skinny_product(M, K, made_cols, 1.0f, X.data(), ldx, F.data(), U.data(), ldu);
          linear_forward_group(X.data(), M, ldx, U.data(), ldu, u_cols, outs, p);
        }
        return Y;
      };
      std::vector<float> u_first = U0, u_made = U0;
      const std::vector<float> y_first = run(false, u_first), y_made = run(true, u_made);
      EXPECT_EQ(0, std::memcmp(u_first.data(), u_made.data(), u_first.size() * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(y_first.data(), y_made.data(), y_first.size() * sizeof(float)));
      for (int64_t r = 0; r < M; ++r)  // the made columns are finite: X . F was written
        for (int64_t c = 0; c < made_cols; ++c) EXPECT_TRUE(std::isfinite(u_made[r * ldu + c]));
    }
  // The made columns must be the call's U and lie in its u_cols.
  std::vector<float> X(2 * K), U(2 * ldu), U2(2 * ldu), Y(2 * 130);
  const GroupProduct a{w0.view(), Y.data(), 130, B0.data(), 5, 3, 1.0f};
  EXPECT_THROW(linear_forward_group(X.data(), 2, K, U.data(), ldu, u_cols, {&a, 1}, Precision::F32,
                                    MadeColumns{U2.data(), F.data(), made_cols}),
               Error);
  EXPECT_THROW(linear_forward_group(X.data(), 2, K, U.data(), ldu, u_cols, {&a, 1}, Precision::F32,
                                    MadeColumns{U.data(), F.data(), u_cols + 1}),
               Error);
}

// The skinny LoRA products (skinny.h) against a double reference at the f32 tolerance, for ranks
// below, at and across the 16-lane vectors (masked tails), row and reduction lengths that leave
// partial register blocks, NaN past each input row (a kernel reading beyond a row is caught) and
// output padding that must stay untouched; and the same bits on one thread as on all of them.
TEST(Skinny, ProductAndReduceMatchReference) {
  std::mt19937 rng(91);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int checked = 0;
  for (int64_t R : {1, 5, 16, 17, 32, 40, 64})
    for (int64_t M : {1, 7, 19, 300})
      for (int64_t K : {1, 13, 100}) {
        SCOPED_TRACE("R=" + std::to_string(R) + " M=" + std::to_string(M) +
                     " K=" + std::to_string(K));
        const float alpha = -1.25f;
        const std::vector<float> X = random_matrix(rng, M, K, K + 3, 1.0f, nan);
        const std::vector<float> F = random_matrix(rng, K, R, R, 1.0f, nan);
        const std::vector<float> G = random_matrix(rng, M, R, R + 2, 1.0f, nan);
        // product: out [M x R], ldo R + 1
        std::vector<float> out(static_cast<size_t>(M * (R + 1)), kOutputPad);
        skinny_product(M, K, R, alpha, X.data(), K + 3, F.data(), out.data(), R + 1);
        int64_t bad = 0;
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t r = 0; r < R; ++r) {
            double want = 0, l2 = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double p = double(X[m * (K + 3) + k]) * F[k * R + r];
              want += p;
              l2 += p * p;
            }
            want *= alpha;
            const double tol =
                8 * std::ldexp(1.0, -24) * std::sqrt(double(K)) * std::fabs(alpha) * std::sqrt(l2) +
                std::ldexp(std::fabs(want), -22);
            if (!(std::fabs(out[m * (R + 1) + r] - want) <= tol)) ++bad;
          }
          if (out[m * (R + 1) + R] != kOutputPad) ++bad;
        }
        EXPECT_EQ(bad, 0) << "skinny_product";
        // reduce: out [K x R] = alpha X^T G
        auto reduce_errors = [&](const std::vector<float>& red, float a) {
          int64_t errors = 0;
          for (int64_t k = 0; k < K; ++k)
            for (int64_t r = 0; r < R; ++r) {
              double want = 0, l2 = 0;
              for (int64_t m = 0; m < M; ++m) {
                const double p = double(X[m * (K + 3) + k]) * G[m * (R + 2) + r];
                want += p;
                l2 += p * p;
              }
              want *= a;
              const double tol =
                  8 * std::ldexp(1.0, -24) * std::sqrt(double(M)) * std::fabs(a) * std::sqrt(l2) +
                  std::ldexp(std::fabs(want), -22);
              if (!(std::fabs(red[k * R + r] - want) <= tol)) ++errors;
            }
          return errors;
        };
        std::vector<float> red(static_cast<size_t>(K * R), kOutputPad);
        skinny_reduce(M, K, R, alpha, X.data(), K + 3, G.data(), R + 2, red.data());
        EXPECT_EQ(reduce_errors(red, alpha), 0) << "skinny_reduce";
        // Both in one pass (t with its own alpha): t the product's bits, the reduction to the
        // reference's tolerance, whatever the thread count (threads without rows included).
        {
          std::vector<float> t(out.size(), kOutputPad), both(red.size(), kOutputPad);
          std::vector<float> unit(out.size(), kOutputPad);
          skinny_product(M, K, R, 1.0f, X.data(), K + 3, F.data(), unit.data(), R + 1);
          skinny_product_reduce(M, K, R, X.data(), K + 3, 1.0f, F.data(), t.data(), R + 1, alpha,
                                G.data(), R + 2, both.data());
          EXPECT_EQ(t, unit) << "skinny_product_reduce's product";
          EXPECT_EQ(reduce_errors(both, alpha), 0) << "skinny_product_reduce's reduction";
          if (cpu_features().avx512f)
            for (int threads : {1, 3}) {
              std::fill(t.begin(), t.end(), kOutputPad);
              std::fill(both.begin(), both.end(), kOutputPad);
              detail::skinny_product_reduce_avx512(M, K, R, X.data(), K + 3, 1.0f, F.data(),
                                                   t.data(), R + 1, alpha, G.data(), R + 2,
                                                   both.data(), threads);
              EXPECT_EQ(t, unit) << threads << " threads";
              EXPECT_EQ(reduce_errors(both, alpha), 0) << threads << " threads";
            }
        }
        if (cpu_features().avx512f) {  // one thread gives the same bits as two
          std::vector<float> one(out.size(), kOutputPad), one_red(red.size(), kOutputPad);
          detail::skinny_product_avx512(M, K, R, alpha, X.data(), K + 3, F.data(), one.data(),
                                        R + 1, 1);
          detail::skinny_reduce_avx512(M, K, R, alpha, X.data(), K + 3, G.data(), R + 2,
                                       one_red.data(), 1);
          std::vector<float> two(out.size(), kOutputPad), two_red(red.size(), kOutputPad);
          detail::skinny_product_avx512(M, K, R, alpha, X.data(), K + 3, F.data(), two.data(),
                                        R + 1, 2);
          detail::skinny_reduce_avx512(M, K, R, alpha, X.data(), K + 3, G.data(), R + 2,
                                       two_red.data(), 2);
          EXPECT_EQ(one, two);
          EXPECT_EQ(one_red, two_red);
        }
        ++checked;
      }
  EXPECT_EQ(checked, 7 * 4 * 3);
}

// No rows: the one-pass product and reduction leaves t alone and the reduction all zeros.
TEST(Skinny, ProductReduceOverNoRowsGivesZeros) {
  const int64_t K = 20, R = 16;
  std::vector<float> F(K * R, 1.0f), t(R, kOutputPad), out(K * R, kOutputPad);
  const float x = 0.0f, g = 0.0f;
  skinny_product_reduce(0, K, R, &x, K, 1.0f, F.data(), t.data(), R, 2.0f, &g, R, out.data());
  EXPECT_EQ(t, std::vector<float>(R, kOutputPad));
  EXPECT_EQ(out, std::vector<float>(K * R, 0.0f));
}

// linear_backward_low_rank (t, dB and dX with dY read once on the bf16 route) gives the bits of
// its two steps run apart (skinny_product_reduce, then linear_backward_input_low_rank), for
// weights in one tile and in several (where it runs them apart itself), odd shapes, strided dY
// / U / T / dX, overwrite and accumulate; NaN past each input row catches a read beyond it.
TEST(Gemm, LowRankBackwardInOnePassMatchesItsStepsApart) {
  std::mt19937 rng(17);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int checked = 0;
  for (DType dtype : {DType::F32, DType::BF16, DType::NF4, DType::Q4_K})
    for (int64_t N : {int64_t{64}, int64_t{200}, int64_t{1} << 15})
      for (int64_t M : {1, 37, 300, 1024})  // 1024: the AMX tile kernel's products
        for (int64_t R : {5, 16})
          for (bool accumulate : {false, true}) {
            const int64_t K = test_k(dtype);
            // One large weight (several tiles), for two dtypes.
            if (N > 1000 && (M != 37 || R != 16 || dtype == DType::BF16 || dtype == DType::Q4_K))
              continue;
            SCOPED_TRACE(std::string(dtype_name(dtype)) + " N=" + std::to_string(N) +
                         " M=" + std::to_string(M) + " R=" + std::to_string(R) +
                         (accumulate ? " accumulate" : ""));
            const TestWeight w = make_weight(rng, dtype, N, K);
            const std::vector<float> dY = random_matrix(rng, M, N, N + 3, 1.0f, nan);
            const std::vector<float> U = random_matrix(rng, M, R, R + 2, 1.0f, nan);
            const std::vector<float> A = random_matrix(rng, R, K, K, 0.1f, nan);
            const std::vector<float> B = random_matrix(rng, N, R, R, 0.1f, nan);
            const std::vector<float> dx0 = random_matrix(rng, M, K, K + 1, 1.0f, kOutputPad);
            std::vector<float> t1(static_cast<size_t>(M * (R + 1)), kOutputPad), t2 = t1;
            std::vector<float> db1(static_cast<size_t>(N * R), kOutputPad), db2 = db1;
            std::vector<float> dx1 = dx0, dx2 = dx0;
            linear_backward_low_rank(dY.data(), M, N + 3, w.view(), A.data(), B.data(), R, 0.75f,
                                     U.data(), R + 2, t1.data(), R + 1, db1.data(), dx1.data(),
                                     K + 1, accumulate);
            skinny_product_reduce(M, N, R, dY.data(), N + 3, 1.0f, B.data(), t2.data(), R + 1,
                                  0.75f, U.data(), R + 2, db2.data());
            linear_backward_input_low_rank(dY.data(), M, N + 3, w.view(), t2.data(), R + 1,
                                           A.data(), R, 0.75f, dx2.data(), K + 1, accumulate);
            EXPECT_EQ(t1, t2);
            EXPECT_EQ(db1, db2);
            EXPECT_EQ(dx1, dx2);
            ++checked;
          }
  EXPECT_EQ(checked, 4 * 2 * 4 * 2 * 2 + 2 * 2);
}

TEST(Gemm, AutoIsTheResolvedPrecision) {
  EXPECT_EQ(resolve_precision(Precision::F32), Precision::F32);
  EXPECT_EQ(resolve_precision(Precision::Auto),
            cpu_has_avx512_bf16() ? Precision::BF16 : Precision::F32);
  std::mt19937 rng(5);
  const TestWeight w = make_weight(rng, DType::Q4_0, 70, 64);
  const std::vector<float> x = random_matrix(rng, 9, 64, 64, 1.0f, 0.0f);
  std::vector<float> y_auto(9 * 70), y_resolved(9 * 70);
  linear_forward(x.data(), 9, 64, w.view(), y_auto.data(), 70, false, Precision::Auto);
  linear_forward(x.data(), 9, 64, w.view(), y_resolved.data(), 70, false,
                 resolve_precision(Precision::Auto));
  EXPECT_EQ(y_auto, y_resolved);
}

// ---- the checker itself: each deliberate kernel bug must be caught ----

struct CheckerSetup {
  TestWeight w;
  Case c;
  Fixture f;
  std::vector<float> good;  // the kernel's (correct) output
};

CheckerSetup checker_setup(DType dtype, Precision p, int64_t N, int64_t K) {
  std::mt19937 rng(42);
  CheckerSetup s{make_weight(rng, dtype, N, K), {Product::Forward, 64, 0, false, 48}, {}, {}};
  s.f = make_fixture(rng, s.c, s.w);
  s.good = s.f.out0;
  run_kernel(s.c, s.f.in.data(), s.f.s.ld_in, s.w, s.good.data(), s.f.s.ld_out, p);
  return s;
}

int64_t violations(const CheckerSetup& s, const std::vector<float>& got, Precision p) {
  return compare(got, s.f.want, s.f.l2sq, s.c.M, s.f.s.out_width, s.f.s.ld_out,
                 l2_coefficient(resolve_precision(p), s.f.s.reduction))
      .bad;
}

TEST(GemmChecker, AcceptsTheKernelAndRejectsATransposedWeight) {
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const CheckerSetup s = checker_setup(DType::Q8_0, p, 160, 160);  // square, so W^T fits
    EXPECT_EQ(violations(s, s.good, p), 0);
    std::vector<float> wt(s.w.values.size());
    for (int64_t n = 0; n < 160; ++n)
      for (int64_t k = 0; k < 160; ++k) wt[k * 160 + n] = s.w.values[n * 160 + k];
    std::vector<float> transposed = s.f.out0;
    run_ref(Product::Forward, s.c.M, s.f.in.data(), s.f.s.ld_in, from_values(wt, 160, 160),
            transposed.data(), s.f.s.ld_out, false);
    EXPECT_GT(violations(s, transposed, p), s.c.M * 160 / 2);
  }
}

TEST(GemmChecker, RejectsAMissingTileOrRow) {
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const CheckerSetup s = checker_setup(DType::NF4, p, 130, 192);
    std::vector<float> missing_tile = s.good;  // second tile (rows 48..95 of W) never computed
    for (int64_t m = 0; m < s.c.M; ++m)
      std::fill_n(missing_tile.begin() + m * s.f.s.ld_out + 48, 48, 0.0f);
    EXPECT_GE(violations(s, missing_tile, p), s.c.M * 48 * 9 / 10);
    std::vector<float> missing_last = s.good;  // last output column dropped
    for (int64_t m = 0; m < s.c.M; ++m) missing_last[m * s.f.s.ld_out + 129] = 0.0f;
    EXPECT_GE(violations(s, missing_last, p), s.c.M * 9 / 10);
  }
}

TEST(GemmChecker, RejectsAMissingKBlock) {
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const CheckerSetup s = checker_setup(DType::Q4_0, p, 130, 160);
    std::vector<float> w = s.w.values;  // the last 32-block of every row left out
    for (int64_t n = 0; n < 130; ++n) std::fill_n(w.begin() + n * 160 + 128, 32, 0.0f);
    std::vector<float> short_k = s.f.out0;
    run_ref(Product::Forward, s.c.M, s.f.in.data(), s.f.s.ld_in, from_values(w, 130, 160),
            short_k.data(), s.f.s.ld_out, false);
    EXPECT_GT(violations(s, short_k, p), s.c.M * 130 / 2);
  }
}

TEST(GemmChecker, F32ToleranceRejectsABf16Product) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "no AVX512_BF16: the bf16 route does not run here";
  const CheckerSetup s = checker_setup(DType::F32, Precision::BF16, 130, 512);
  EXPECT_EQ(violations(s, s.good, Precision::BF16), 0);
  EXPECT_GT(violations(s, s.good, Precision::F32), s.c.M * 130 / 2);
}

// ---- edges ----

TEST(Gemm, RejectsBadArguments) {
  std::mt19937 rng(3);
  const TestWeight w = make_weight(rng, DType::Q4_0, 64, 96);
  std::vector<float> x(10 * 128, 1.0f), y(10 * 128);
  try {
    linear_forward(x.data(), 10, 64, w.view(), y.data(), 64, false);
    FAIL() << "ldx < K was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_forward: X has leading dimension 64"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(linear_backward_input(x.data(), 10, 32, w.view(), y.data(), 96, false), Error);
  WeightView odd = w.view();
  odd.rows = 63;
  odd.cols = 48;  // 3024 elements: not whole 32-element Q4_0 blocks
  try {
    linear_forward(x.data(), 10, 128, odd, y.data(), 128, false);
    FAIL() << "a [63 x 48] q4_0 weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds 3024 elements, not a multiple of the 32-element q4_0 block"),
              std::string::npos)
        << e.what();
  }
}

TEST(Gemm, EmptyProducts) {
  std::mt19937 rng(4);
  const TestWeight w = make_weight(rng, DType::BF16, 8, 16);
  std::vector<float> y(4 * 16, 5.0f);
  linear_forward(nullptr, 0, 16, w.view(), nullptr, 8, false);  // M = 0: nothing to do
  const WeightView no_rows{DType::BF16, w.bytes.data(), 0, 16};
  std::vector<float> dy(4, 1.0f);
  linear_backward_input(dy.data(), 4, 1, no_rows, y.data(), 16, false);  // N = 0: dX = 0
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v == 0.0f; }));
}

// sgemm runs small products in one OpenBLAS call and splits large ones over the OpenMP threads
// by rows (M >= N) or by 16-column panels (N > M); all three paths, every transpose.
TEST(Gemm, SgemmMatchesNaiveProduct) {
  std::mt19937 rng(8);
  struct Dims {
    int64_t M, N, K;
  };
  for (const Dims d : {Dims{13, 11, 17}, Dims{301, 20, 700}, Dims{20, 301, 700}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const int64_t M = d.M, N = d.N, K = d.K;
        const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 4, ldc = N + 1;
        const std::vector<float> a = random_matrix(rng, ta ? K : M, ta ? M : K, lda, 1.0f, 0.0f);
        const std::vector<float> b = random_matrix(rng, tb ? N : K, tb ? K : N, ldb, 1.0f, 0.0f);
        std::vector<float> c = random_matrix(rng, M, N, ldc, 1.0f, 0.0f), want = c;
        sgemm(ta, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, 2.0f, c.data(), ldc);
        int64_t bad = 0;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double acc = 0.0, l1 = 0.0;
            for (int64_t k = 0; k < K; ++k) {
              const double p = double(ta ? a[k * lda + i] : a[i * lda + k]) *
                               double(tb ? b[j * ldb + k] : b[k * ldb + j]);
              acc += p;
              l1 += std::fabs(p);
            }
            const double expect = 0.5 * acc + 2.0 * want[i * ldc + j];
            // f32 accumulation: far below the error of a wrong or missing term (|p| ~ 1).
            const double tol = 8.0 * std::ldexp(1.0, -24) * std::sqrt(double(K)) * (l1 + 2.0 * std::fabs(expect)) + 1e-6;
            bad += !(std::fabs(c[i * ldc + j] - expect) <= tol);
          }
        EXPECT_EQ(bad, 0) << "M=" << M << " N=" << N << " K=" << K << " trans_a=" << ta
                          << " trans_b=" << tb;
      }
}

// The first 64-byte aligned element of v (allocated 64 bytes longer than it needs): tiles and
// the combined product's stage are stored with aligned stores.
template <typename T>
T* aligned64(std::vector<T>& v) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(v.data()) + 63) / 64 * 64);
}

// The largest |c - want| over every element (padding columns too): bf16 products summed in f32
// in two orders differ by at most 2e-5 sqrt(K) for operands in [-1, 1].
double worst_difference(const std::vector<float>& c, const std::vector<float>& want) {
  double worst = 0;
  for (size_t i = 0; i < c.size(); ++i) worst = std::max(worst, std::fabs(double(c[i]) - want[i]));
  return worst;
}

// gemm_bf16 (oneDNN, strided operands, alpha, accumulate) against ref::gemm_bf16 on the same
// bf16 bits: the products are exact in f32, so only the accumulation order differs. Operands are
// dense (row-major or transposed) or have gaps between rows (attention reads K and V in place);
// on AMX CPUs the small products with gaps run on dense copies (gemm_dnnl.cpp), and C's padding
// columns must come out untouched.
TEST(Gemm, Bf16GemmMatchesScalarReference) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "SKIPPED: this CPU has no AVX512_BF16";
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t M : {1, 37, 130})
    for (int64_t N : {5, 64})
      for (int64_t K : {3, 64, 200})
        for (bool ta : {false, true})
          for (bool tb : {false, true})
            for (bool acc : {false, true})
              for (int64_t gap : {0, 5}) {
                // A stored row-major [M x K] or as its transpose [K x M], each stored row `gap`
                // elements longer than the matrix's; the same for B.
                const int64_t as0 = ta ? 1 : K + gap, as1 = ta ? M + gap : 1;
                const int64_t bs0 = tb ? 1 : N + gap, bs1 = tb ? K + gap : 1;
                std::vector<uint16_t> a(static_cast<size_t>((M + gap) * (K + gap)));
                std::vector<uint16_t> b(static_cast<size_t>((K + gap) * (N + gap)));
                for (auto& x : a) x = f32_to_bf16(dist(rng));
                for (auto& x : b) x = f32_to_bf16(dist(rng));
                const int64_t ldc = N + 3;
                std::vector<float> c(static_cast<size_t>(M * ldc));
                for (auto& x : c) x = dist(rng);
                std::vector<float> want = c;
                gemm_bf16(M, N, K, 0.75f, a.data(), as0, as1, b.data(), bs0, bs1, c.data(), ldc,
                          acc);
                ref::gemm_bf16(M, N, K, 0.75f, a.data(), as0, as1, b.data(), bs0, bs1, want.data(),
                               ldc, acc);
                EXPECT_LE(worst_difference(c, want), 2e-5 * std::sqrt(double(K)))
                    << "M=" << M << " N=" << N << " K=" << K << " ta=" << ta << " tb=" << tb
                    << " accumulate=" << acc << " gap=" << gap;
              }
}

// The pair layouts (tile_gemm.h) against their definition, element (k, n) of B at
// pairs[(k / 2) * 2 * ldp + 2 * n + k % 2], with padding between pair-rows left untouched
// (70 columns: where AMX exists, to_pairs runs 32 columns at a time with AVX-512, then a tail).
TEST(TileGemm, PairLayoutsPlaceEveryElement) {
  // S [38 x 70] in a wider buffer: 16 x 16 blocks of 32-bit elements and ragged edges.
  const int64_t rows = 38, cols = 70, lds = 75, ldp = 72;
  std::vector<uint16_t> s(static_cast<size_t>(rows * lds));
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<uint16_t>(i + 1);
  // B = S [38 x 70]: 19 pair-rows of 70 pairs; B = S^T [70 x 38]: 35 pair-rows of 38 (of 72).
  std::vector<uint16_t> p(static_cast<size_t>(rows / 2 * 2 * ldp), 0xdead);
  // `pairs` holds B [K x N] (element b(k, n)) in pairs, the padding past N pairs untouched.
  const auto expect_pairs = [&](const std::vector<uint16_t>& pairs, int64_t K, int64_t N, auto b) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n)
        EXPECT_EQ(pairs[(k / 2) * 2 * ldp + 2 * n + k % 2], b(k, n)) << k << "," << n;
    for (int64_t r = 0; r < K / 2; ++r)
      for (int64_t j = 2 * N; j < 2 * ldp; ++j) EXPECT_EQ(pairs[r * 2 * ldp + j], 0xdead);
  };
  to_pairs(s.data(), rows, cols, lds, p.data(), ldp);
  expect_pairs(p, rows, cols, [&](int64_t k, int64_t n) { return s[k * lds + n]; });
  std::vector<uint16_t> pt(static_cast<size_t>(cols / 2 * 2 * ldp), 0xdead);
  to_pairs_transposed(s.data(), rows, cols, lds, pt.data(), ldp);
  expect_pairs(pt, cols, rows, [&](int64_t k, int64_t n) { return s[n * lds + k]; });
  EXPECT_THROW(to_pairs(s.data(), 5, cols, lds, p.data(), ldp), Error);  // odd row count
  EXPECT_THROW(to_pairs_transposed(s.data(), rows, 9, lds, pt.data(), ldp), Error);
  if (amx_tiles_available()) {  // the portable loops agree with the AVX-512 ones
    set_amx_tiles_allowed(false);
    std::vector<uint16_t> portable(p.size(), 0xdead), portable_t(pt.size(), 0xdead);
    to_pairs(s.data(), rows, cols, lds, portable.data(), ldp);
    to_pairs_transposed(s.data(), rows, cols, lds, portable_t.data(), ldp);
    set_amx_tiles_allowed(true);
    EXPECT_EQ(portable, p);
    EXPECT_EQ(portable_t, pt);
  }
}

// The tile layout (tile_gemm.h) against its definition, from S and from S^T, with a 16-column
// edge (the last 32-column load masked) and rows wider than S; a share of 16-column blocks
// made on its own lands where the whole B puts it.
TEST(TileGemm, TileLayoutPlacesEveryElement) {
  if (!amx_tiles_available())
    GTEST_SKIP() << "SKIPPED: no AMX tiles on this CPU (or LOOM_NO_AMX is set)";
  // `tiles` holds B [K x N] (element b(k, n)) in tiles.
  const auto expect_tiles = [](const std::vector<uint16_t>& tiles, int64_t K, int64_t N, auto b) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n)
        ASSERT_EQ(
            tiles[(n / 16 * (K / 32) + k / 32) * 512 + (k % 32) / 2 * 32 + 2 * (n % 16) + k % 2],
            b(k, n))
            << k << "," << n;
  };
  const int64_t rows = 64, cols = 48, lds = 70;  // B = S [64 x 48]; B = S^T [48 x 64]
  std::vector<uint16_t> s(static_cast<size_t>(rows * lds));
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<uint16_t>(i * 5 + 1);
  const auto tile_buffer = [](int64_t n) {  // 64-byte aligned, as the kernels store
    return std::vector<uint16_t>(static_cast<size_t>(n + 32), 0xdead);
  };
  std::vector<uint16_t> tb = tile_buffer(rows * cols);
  to_tiles(s.data(), rows, cols, lds, aligned64(tb));
  std::vector<uint16_t> t(aligned64(tb), aligned64(tb) + rows * cols);
  expect_tiles(t, rows, cols, [&](int64_t k, int64_t n) { return s[k * lds + n]; });
  std::vector<uint16_t> share_b = tile_buffer(rows * 32);  // columns 16 .. 47 alone
  to_tiles(s.data() + 16, rows, 32, lds, aligned64(share_b));
  EXPECT_TRUE(
      std::equal(aligned64(share_b), aligned64(share_b) + rows * 32, t.begin() + rows * 16));

  std::vector<uint16_t> tt = tile_buffer(rows * cols);
  to_tiles_transposed(s.data(), cols, rows, lds, aligned64(tt));  // S's first 48 rows, 64 columns
  std::vector<uint16_t> u(aligned64(tt), aligned64(tt) + rows * cols);
  expect_tiles(u, rows, cols, [&](int64_t k, int64_t n) { return s[n * lds + k]; });
  EXPECT_THROW(to_tiles(s.data(), 48, 32, lds, aligned64(tb)), Error);  // rows not whole tiles
  EXPECT_THROW(to_tiles_transposed(s.data(), 16, 48, lds, aligned64(tb)), Error);
  EXPECT_THROW(to_tiles(s.data(), rows, cols, lds, aligned64(tb) + 8), Error);  // not aligned
  EXPECT_THROW(to_tiles_transposed(s.data(), cols, rows, lds, aligned64(tb) + 8), Error);
}

// transpose_bf16_rows32 against the definition, over several 32-column blocks, with strides
// wider than the matrices and the output's padding left untouched.
TEST(TileGemm, TransposeOf32RowsPlacesEveryElement) {
  if (!amx_tiles_available())
    GTEST_SKIP() << "SKIPPED: no AMX tiles on this CPU (or LOOM_NO_AMX is set)";
  for (int64_t cols : {32, 96}) {
    const int64_t ldi = cols + 5, ldo = 40;
    std::vector<uint16_t> in(static_cast<size_t>(32 * ldi));
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint16_t>(i * 7 + 3);
    std::vector<uint16_t> out(static_cast<size_t>(cols * ldo), 0xdead);
    transpose_bf16_rows32(in.data(), ldi, cols, out.data(), ldo);
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t i = 0; i < ldo; ++i)
        EXPECT_EQ(out[j * ldo + i], i < 32 ? in[i * ldi + j] : 0xdead) << j << "," << i;
  }
  std::vector<uint16_t> buf(64 * 64);
  EXPECT_THROW(transpose_bf16_rows32(buf.data(), 64, 48, buf.data(), 32), Error);
}

// The AMX tile products, B in pairs and B in tiles (alpha 1 only), against ref::gemm_bf16 on
// the same bf16 bits (exact products, f32 sums in another order): every 32 x 32 / 16-edge block
// shape, deep and shallow reductions, a reduction long enough that B goes in several column
// panels (K = 4096: panels of 64 columns), alpha, accumulate (with alpha 1, C loaded into the
// tiles), and operands and C with gaps between rows, whose padding must stay untouched.
TEST(TileGemm, AmxProductMatchesScalarReference) {
  if (!amx_tiles_available())
    GTEST_SKIP() << "SKIPPED: no AMX tiles on this CPU (or LOOM_NO_AMX is set)";
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t M : {16, 48, 192})
    for (int64_t N : {16, 48, 512})
      for (int64_t K : {32, 64, 480, 4096})
        for (bool acc : {false, true})
          for (float alpha : {1.0f, 0.125f}) {
            if (K == 4096 && (M != 16 || N != 512)) continue;  // one long reduction
            const int64_t lda = K + 8, ldb = N + 4, ldp = N + 16, ldc = N + 3;
            std::vector<uint16_t> a(static_cast<size_t>(M * lda)), b(static_cast<size_t>(K * ldb));
            for (auto& x : a) x = f32_to_bf16(dist(rng));
            for (auto& x : b) x = f32_to_bf16(dist(rng));
            std::vector<uint16_t> pairs(static_cast<size_t>(K / 2 * 2 * ldp));
            to_pairs(b.data(), K, N, ldb, pairs.data(), ldp);
            std::vector<float> c(static_cast<size_t>(M * ldc));
            for (auto& x : c) x = dist(rng);
            std::vector<float> want = c, c_tiles = c;
            amx_gemm_bf16_pairs(M, N, K, alpha, a.data(), lda, pairs.data(), ldp, c.data(), ldc,
                                acc);
            ref::gemm_bf16(M, N, K, alpha, a.data(), lda, 1, b.data(), ldb, 1, want.data(), ldc,
                           acc);
            EXPECT_LE(worst_difference(c, want), 2e-5 * std::sqrt(double(K)))
                << "M=" << M << " N=" << N << " K=" << K << " alpha=" << alpha
                << " accumulate=" << acc;
            if (alpha != 1.0f) continue;
            std::vector<uint16_t> tiles(static_cast<size_t>(K * N + 32));
            to_tiles(b.data(), K, N, ldb, aligned64(tiles));
            amx_gemm_bf16_tiles(M, N, K, a.data(), lda, aligned64(tiles), c_tiles.data(), ldc, acc);
            EXPECT_LE(worst_difference(c_tiles, want), 2e-5 * std::sqrt(double(K)))
                << "B in tiles: M=" << M << " N=" << N << " K=" << K << " accumulate=" << acc;
          }
  std::vector<uint16_t> a(64 * 64), p(64 * 64);
  std::vector<float> c(64 * 64);
  EXPECT_THROW(
      amx_gemm_bf16_pairs(24, 16, 32, 1.0f, a.data(), 32, p.data(), 16, c.data(), 16, false),
      Error);  // M not a multiple of 16
  EXPECT_THROW(
      amx_gemm_bf16_pairs(16, 16, 48, 1.0f, a.data(), 48, p.data(), 16, c.data(), 16, false),
      Error);  // K not a multiple of 32
  EXPECT_THROW(amx_gemm_bf16_tiles(16, 24, 32, a.data(), 32, p.data(), c.data(), 24, false),
               Error);  // N not a multiple of 16
}

// The combined product gives combine(C1, C2) with C1, C2 the bits of the two products run
// apart: 16-row edge strips, a 16-column edge, a reduction long enough for several panels
// (K = 4096: panels of 32 columns), rows of Y wider than N whose padding stays untouched.
TEST(TileGemm, CombinedProductsEqualTheProductsCombined) {
  if (!amx_tiles_available())
    GTEST_SKIP() << "SKIPPED: no AMX tiles on this CPU (or LOOM_NO_AMX is set)";
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const CombineRows combine = [](const float* c1, const float* c2, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = c1[i] * 0.5f - c2[i];
  };
  for (int64_t M : {16, 48})
    for (int64_t N : {16, 80})
      for (int64_t K : {32, 4096}) {
        const int64_t lda = K + 32, ldy = N + 5;
        std::vector<uint16_t> a(static_cast<size_t>(M * lda));
        for (auto& x : a) x = f32_to_bf16(dist(rng));
        std::vector<uint16_t> buf1(static_cast<size_t>(K * N + 32)), buf2 = buf1;
        for (std::vector<uint16_t>* buf : {&buf1, &buf2}) {
          std::vector<uint16_t> b(static_cast<size_t>(K * N));
          for (auto& x : b) x = f32_to_bf16(dist(rng));
          to_tiles(b.data(), K, N, N, aligned64(*buf));
        }
        std::vector<float> c1(static_cast<size_t>(M * N)), c2 = c1;
        amx_gemm_bf16_tiles(M, N, K, a.data(), lda, aligned64(buf1), c1.data(), N, false);
        amx_gemm_bf16_tiles(M, N, K, a.data(), lda, aligned64(buf2), c2.data(), N, false);
        std::vector<float> want(static_cast<size_t>(M * ldy), kOutputPad), got = want;
        for (int64_t m = 0; m < M; ++m)
          combine(c1.data() + m * N, c2.data() + m * N, want.data() + m * ldy, N);
        std::vector<float> stage(static_cast<size_t>(amx_combined_stage_floats(K) + 16));
        float* st = aligned64(stage);
        amx_gemm_bf16_tiles_combined(M, N, K, a.data(), lda, aligned64(buf1), aligned64(buf2),
                                     combine, st, got.data(), ldy);
        EXPECT_EQ(got, want) << "M=" << M << " N=" << N << " K=" << K;
      }
}

// linear_forward_group_combined gives the bits of linear_forward_group followed by the combine
// (swiglu's kernel), for bf16 and NF4 weights, with low-rank terms in their own U columns (one
// output without) and U columns made from X; it runs exactly where the AMX tile route does
// (M >= 1024 rows, two weights of one shape) and leaves everything alone elsewhere.
TEST(Gemm, GroupCombinedEqualsTheGroupThenCombined) {
  std::mt19937 rng(94);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const CombineRows combine = ops_detail::vec_kernels().swiglu_fwd;
  const int64_t K = 192, N = 96, u_cols = 13, ldu = 16;
  for (DType dtype : {DType::BF16, DType::NF4})
    for (int64_t M : {1024, 512}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " M=" + std::to_string(M));
      const TestWeight w0 = make_weight(rng, dtype, N, K), w1 = make_weight(rng, dtype, N, K);
      const std::vector<float> X = random_matrix(rng, M, K, K + 3, 1.0f, nan);
      const std::vector<float> F = random_matrix(rng, K, 5, 5, 0.1f, 0.0f);  // makes U[:, 0:5]
      std::vector<float> U = random_matrix(rng, M, u_cols, ldu, 1.0f, nan), U2 = U;
      const std::vector<float> B0 = random_matrix(rng, N, 5, 5, 0.1f, 0.0f);
      std::vector<GroupProduct> outs(2);
      outs[0].W = w0.view(), outs[0].B = B0.data(), outs[0].rank = 5, outs[0].u_col = 0;
      outs[0].scale = 1.5f;
      outs[1].W = w1.view();  // no term
      std::vector<float> y0(static_cast<size_t>(M * N)), y1 = y0;
      outs[0].Y = y0.data(), outs[0].ldy = N, outs[1].Y = y1.data(), outs[1].ldy = N;
      std::vector<float> want(static_cast<size_t>(M * (N + 2)), kOutputPad), got = want;
      const bool ran = linear_forward_group_combined(
          X.data(), M, K + 3, U.data(), ldu, u_cols, outs, Precision::BF16,
          MadeColumns{U.data(), F.data(), 5}, combine, got.data(), N + 2);
      EXPECT_EQ(ran, M >= 1024 && amx_tiles_available() && cpu_has_avx512_bf16());
      if (!ran) {
        EXPECT_EQ(got, want) << "touched its output without running";
        continue;
      }
      linear_forward_group(X.data(), M, K + 3, U2.data(), ldu, u_cols, outs, Precision::BF16,
                           MadeColumns{U2.data(), F.data(), 5});
      for (int64_t m = 0; m < M; ++m)
        combine(y0.data() + m * N, y1.data() + m * N, want.data() + m * (N + 2), N);
      EXPECT_EQ(got, want);
      for (size_t i = 0; i < U.size(); ++i)  // the made columns too (NaN padding compares equal)
        ASSERT_TRUE(U[i] == U2[i] || (std::isnan(U[i]) && std::isnan(U2[i]))) << i;
      // Weights of different shapes: not combined.
      const TestWeight narrow = make_weight(rng, dtype, N - 32, K);
      std::vector<GroupProduct> mixed = outs;
      mixed[1].W = narrow.view();
      EXPECT_FALSE(linear_forward_group_combined(X.data(), M, K + 3, U.data(), ldu, u_cols, mixed,
                                                 Precision::BF16, {}, combine, got.data(), N + 2));
    }
}

// The linear products on the AMX tile kernel (M >= 1024 rows, whole tiles) against the double
// reference fed the bits the route rounds (as Bf16LowRankTermMatchesRoundedReference, with the
// f32 bound): bf16 weights read in place, NF4 and Q4_K dequantized into tiles, one weight tile
// and several (forward: the outputs' columns in tiles of 64; input gradient: accumulated over
// them), with a low-rank term and without, overwrite and accumulate. Every case must run on the
// tile kernel.
TEST(Gemm, TileKernelProductsMatchRoundedReference) {
  if (!cpu_has_avx512_bf16() || !amx_tiles_available())
    GTEST_SKIP() << "SKIPPED: no AMX tiles on this CPU (or LOOM_NO_AMX is set)";
  std::mt19937 rng(90);
  const float scale = 1.75f;
  int checked = 0;
  for (DType dtype : {DType::BF16, DType::NF4, DType::Q4_K}) {
    const int64_t K = dtype == DType::BF16 ? 96 : dtype == DType::NF4 ? 192 : 256;
    const TestWeight w = make_weight(rng, dtype, 96, K);
    for (Product product : {Product::Forward, Product::BackwardInput})
      for (bool accumulate : {false, true})
        for (int64_t tile_rows : {0, 64})
          for (int64_t R : {0, 5}) {
            const Case c{product, 1024, 3, accumulate, tile_rows};
            SCOPED_TRACE(describe(c, dtype, Precision::BF16) + " R=" + std::to_string(R));
            const Fixture f = make_fixture(rng, c, w);
            const Term t = make_term(rng, c, w, std::max<int64_t>(R, 1));
            std::vector<float> want = f.out0, l2sq = f.l2sq;
            run_ref(product, c.M, bf16_rounded(f.in).data(), f.s.ld_in,
                    from_values(bf16_rounded(w.values), w.rows, w.cols), want.data(), f.s.ld_out,
                    accumulate);
            if (R > 0) {
              std::vector<float> scaled = t.factor;
              for (float& x : scaled) x *= scale;
              add_term(c, t, bf16_rounded(t.act), bf16_rounded(scaled), 1.0f, f.s, want, l2sq);
            }
            const int64_t before = detail::tile_kernel_products();
            const double coef = l2_coefficient(Precision::F32, f.s.reduction + R);
            const Comparison r =
                R > 0 ? run_term(c, w, f, t, scale, Precision::BF16, want, l2sq, coef) : [&] {
                  std::vector<float> got = f.out0;
                  run_kernel(c, f.in.data(), f.s.ld_in, w, got.data(), f.s.ld_out, Precision::BF16);
                  return compare(got, want, l2sq, c.M, f.s.out_width, f.s.ld_out, coef);
                }();
            EXPECT_EQ(r.bad, 0) << r.bad << " elements out of tolerance; first: " << r.first;
            EXPECT_EQ(r.pad_touched, 0) << "output padding was written";
            EXPECT_GT(detail::tile_kernel_products(), before) << "not on the tile kernel";
            ++checked;
          }
  }
  EXPECT_EQ(checked, 3 * 2 * 2 * 2 * 2);
}

// test_main calls ensure_blas_coretype: on an AVX-512 CPU OpenBLAS must now run AVX-512 kernels,
// even with OPENBLAS_CORETYPE=Haswell inherited from the environment.
TEST(Cpu, BlasRunsAvx512KernelsOnAvx512Cpus) {
  const CpuFeatures& f = cpu_features();
  const char* no_reexec = std::getenv("LOOM_NO_REEXEC");
  if (!(f.avx512f && f.avx512bw && f.avx512vl) || (no_reexec && no_reexec[0]))
    GTEST_SKIP() << "no AVX-512, or LOOM_NO_REEXEC is set";
  const std::string core = blas_core_name();
  EXPECT_TRUE(core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids") << core;
}

TEST(Cpu, SummaryNamesTheBlasCore) {
  const std::string s = cpu_summary();
  EXPECT_NE(s.find("OpenBLAS " + blas_core_name()), std::string::npos) << s;
  EXPECT_GE(num_threads(), 1);
  if (cpu_features().avx512bf16) {
    EXPECT_TRUE(cpu_features().avx512f);
  }
}

}  // namespace
}  // namespace loom
