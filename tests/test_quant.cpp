// Tests of the block-quantized storage formats and the float conversions (autograd/quant):
//   - f32 <-> bf16 / f16 scalar conversions against hand-derived bit patterns (ties, subnormals,
//     overflow, inf, NaN) and exhaustively against the bulk (AVX-512) versions;
//   - the fast dequantizers (AVX-512, AVX2) against the loom::ref scalar ones, bit for bit, for
//     every format, f32 and bf16 outputs, on quantized data and on random raw blocks, for ranges that start
//     mid-tensor, without writing outside the range;
//   - hand-derived Q8_0 / Q4_0 / Q4_1 bytes (gguf-py byte parity is in tests/interop);
//   - NF4: nearest-code choice against a brute-force search, the double-quantized absmax layout,
//     round-trip error bounds;
//   - Q4_K / Q6_K round-trip error relative to the data scale;
//   - bad arguments throw loom::Error.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/kernels/gemm.h"
#include "autograd/quant/ggml_blocks.h"
#include "autograd/quant/nf4.h"
#include "autograd/quant/quant.h"
#include "autograd/quant/quant_kernels.h"

namespace loom {
namespace {

uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

constexpr DType kQuantTypes[] = {DType::NF4,  DType::Q8_0, DType::Q4_0,
                                 DType::Q4_1, DType::Q4_K, DType::Q6_K};

std::vector<float> gaussian(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = dist(rng);
  return x;
}

// Random raw storage for dtype t with finite, sane scale fields (so the dequantizers are checked
// on bit patterns our quantizers would never produce).
std::vector<uint8_t> random_raw(DType t, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> raw(static_cast<size_t>(storage_bytes(t, n)));
  for (auto& b : raw) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> mag(-3.0f, 3.0f);
  auto scale = [&](bool positive) {
    const float v = std::exp2(mag(rng) * 4.0f) * (positive || rng() % 2 ? 1.0f : -1.0f);
    return f32_to_f16(v * 0.01f);
  };
  auto put = [&](size_t off, f16_t v) { std::memcpy(raw.data() + off, &v, 2); };
  const DTypeInfo& info = dtype_info(t);
  const int64_t blocks = t == DType::NF4 ? 0 : n / info.block_elems;
  for (int64_t b = 0; b < blocks; ++b) {
    const size_t at = static_cast<size_t>(b * info.block_bytes);
    switch (t) {
      case DType::Q8_0:
      case DType::Q4_0:
        put(at, scale(false));
        break;
      case DType::Q4_1:
        put(at, scale(false));
        put(at + 2, scale(false));
        break;
      case DType::Q4_K:
        put(at, scale(true));
        put(at + 2, scale(true));
        break;
      case DType::Q6_K:
        put(at + 208, scale(false));
        break;
      default:
        break;
    }
  }
  if (t == DType::NF4) {  // sane dq scales and mean; codes and absmax_q stay random
    const int64_t nb = n / kNf4BlockSize, groups = (nb + 255) / 256;
    for (int64_t g = 0; g <= groups; ++g) {
      const float v = std::exp2(mag(rng)) * 0.05f;
      std::memcpy(raw.data() + n / 2 + nb + 4 * g, &v, 4);
    }
  }
  return raw;
}

// fast vs ref over [first, first+count), both outputs, and nothing written outside the range.
void expect_parity(DType t, const std::vector<uint8_t>& data, int64_t n, int64_t first,
                   int64_t count) {
  SCOPED_TRACE(fmt::format("{} n={} first={} count={}", dtype_name(t), n, first, count));
  const float kGuardF = -12345.0f;
  const bf16_t kGuardB = 0x1234;
  std::vector<float> want(static_cast<size_t>(count)),
      got(static_cast<size_t>(count) + 32, kGuardF);
  std::vector<bf16_t> got_b(static_cast<size_t>(count) + 32, kGuardB);
  ref::dequantize(t, data.data(), n, first, count, want.data());
  dequantize(t, data.data(), n, first, count, got.data() + 16);
  dequantize_bf16(t, data.data(), n, first, count, got_b.data() + 16);
  int64_t bad_f = 0, bad_b = 0;
  for (int64_t i = 0; i < count; ++i) {
    const size_t k = static_cast<size_t>(i);
    if (bits(got[k + 16]) != bits(want[k]) && bad_f++ < 3)
      ADD_FAILURE() << "f32 element " << first + i << ": fast " << got[k + 16] << " ref "
                    << want[k];
    if (got_b[k + 16] != f32_to_bf16(want[k]) && bad_b++ < 3)
      ADD_FAILURE() << "bf16 element " << first + i << ": fast " << got_b[k + 16] << " want "
                    << f32_to_bf16(want[k]);
  }
  EXPECT_EQ(bad_f, 0);
  EXPECT_EQ(bad_b, 0);
  for (size_t k = 0; k < 16; ++k) {
    EXPECT_EQ(bits(got[k]), bits(kGuardF));
    EXPECT_EQ(bits(got[k + 16 + static_cast<size_t>(count)]), bits(kGuardF));
    EXPECT_EQ(got_b[k], kGuardB);
    EXPECT_EQ(got_b[k + 16 + static_cast<size_t>(count)], kGuardB);
  }
}

void expect_parity_ranges(DType t, const std::vector<uint8_t>& data, int64_t n) {
  const int64_t blk = dtype_info(t).block_elems;
  expect_parity(t, data, n, 0, n);
  expect_parity(t, data, n, blk, n - 2 * blk);                // starts mid-tensor, ends early
  expect_parity(t, data, n, n - 3 * blk, 3 * blk);            // the tail
  expect_parity(t, data, n, 5 * blk, blk);                    // one block
  expect_parity(t, data, n, 256 * 64, 300 * 64 / blk * blk);  // NF4: crosses an absmax group
}

TEST(Quant, ReportsPath) {
  std::printf("quant fast path: %s\n",
              quant::use_avx512() ? "AVX-512 (checked against the scalar reference)"
              : quant::use_avx2() ? "AVX2 for f32 output (checked against the scalar reference)"
                                  : "scalar only (parity tests compare scalar with itself)");
}

// ---------------------------------------------------------------- conversions

TEST(QuantConvert, Bf16HandDerived) {
  struct Case {
    uint32_t f;
    bf16_t b;
  };
  const Case cases[] = {
      {0x3f800000, 0x3f80},                                              // 1.0
      {0x3f808000, 0x3f80},                                              // tie, even below -> down
      {0x3f818000, 0x3f82},                                              // tie, odd below -> up
      {0x3f808001, 0x3f81},                                              // just above the tie
      {0x3f807fff, 0x3f80},                                              // just below the tie
      {0xbf818000, 0xbf82},                                              // negative tie
      {0x80000000, 0x8000},                                              // -0
      {0x7f7fffff, 0x7f80},                                              // FLT_MAX rounds to inf
      {0x7f7f7fff, 0x7f7f}, {0x7f800000, 0x7f80}, {0xff800000, 0xff80},  // +-inf
      {0x7fc00000, 0x7fc0}, {0x7f800001, 0x7fc0},  // quiet / signalling NaN -> quiet
      {0xff812345, 0xffc1},                        // NaN keeps sign and top payload
      {0x00018000, 0x0002}, {0x00008000, 0x0000},  // subnormal ties
      {0x007fffff, 0x0080}, {0x80000001, 0x8000},  // subnormal up to min normal / down to -0
  };
  for (const Case& c : cases) {
    EXPECT_EQ(f32_to_bf16(from_bits(c.f)), c.b) << std::hex << c.f;
    bf16_t bulk = 0;
    const float v = from_bits(c.f);
    convert_f32_to_bf16(&v, &bulk, 1);
    EXPECT_EQ(bulk, c.b) << std::hex << c.f;
  }
  EXPECT_EQ(bits(bf16_to_f32(0x3f82)), 0x3f820000u);
  EXPECT_EQ(bits(bf16_to_f32(0x0001)), 0x00010000u);
}

TEST(QuantConvert, F16HandDerived) {
  struct Case {
    uint32_t f;
    f16_t h;
  };
  const Case cases[] = {
      {0x3f800000, 0x3c00},  // 1.0
      {0x3f801000, 0x3c00},
      {0x3f803000, 0x3c02},  // ties at 1 + 2^-11, 1 + 3*2^-11
      {0x477fe000, 0x7bff},  // 65504, largest finite
      {0x477fefff, 0x7bff},
      {0x477ff000, 0x7c00},  // just below 65520 / 65520 -> inf (tie to even)
      {0x7f800000, 0x7c00},
      {0xff800000, 0xfc00},
      {0x33800000, 0x0001},  // 2^-24, smallest
                             // subnormal
      {0x33000000, 0x0000},
      {0x33000001, 0x0001},  // 2^-25: tie -> 0; just above -> 1
      {0x33c00000, 0x0002},  // 1.5 * 2^-24: tie -> 2
      {0x387fc000, 0x03ff},
      {0x387fe000, 0x0400},  // largest subnormal; tie -> smallest normal
      {0x38800000, 0x0400},
      {0x80000000, 0x8000},
      {0x00000001, 0x0000},
      {0x7fc00000, 0x7e00},
      {0x7f800001, 0x7e00},
      {0xffc02000, 0xfe01},  // NaNs: quiet, payload
  };
  for (const Case& c : cases) {
    EXPECT_EQ(f32_to_f16(from_bits(c.f)), c.h) << std::hex << c.f;
    f16_t bulk = 0;
    const float v = from_bits(c.f);
    convert_f32_to_f16(&v, &bulk, 1);
    EXPECT_EQ(bulk, c.h) << std::hex << c.f;
  }
  EXPECT_EQ(bits(f16_to_f32(0x0001)), 0x33800000u);
  EXPECT_EQ(bits(f16_to_f32(0x03ff)), 0x387fc000u);
  EXPECT_EQ(bits(f16_to_f32(0x7bff)), 0x477fe000u);
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);
  EXPECT_EQ(bits(f16_to_f32(0xfc00)), 0xff800000u);
  EXPECT_EQ(bits(f16_to_f32(0x7e00)), 0x7fc00000u);
  EXPECT_EQ(bits(f16_to_f32(0x7c01)), 0x7fc02000u);  // signalling NaN comes back quiet
}

TEST(QuantConvert, AllHalfPatternsScalarVsBulk) {
  std::vector<uint16_t> h(65536);
  for (int i = 0; i < 65536; ++i) h[static_cast<size_t>(i)] = static_cast<uint16_t>(i);
  std::vector<float> f16_bulk(65536), bf16_bulk(65536);
  std::vector<bf16_t> f16_as_bf16(65536);
  convert_f16_to_f32(h.data(), f16_bulk.data(), 65536);
  convert_bf16_to_f32(h.data(), bf16_bulk.data(), 65536);
  dequantize_bf16(DType::F16, h.data(), 65536, 0, 65536, f16_as_bf16.data());
  int64_t bad = 0;
  for (int i = 0; i < 65536; ++i) {
    const auto k = static_cast<size_t>(i);
    const float f = f16_to_f32(h[k]);
    bad += bits(f16_bulk[k]) != bits(f);
    bad += bits(bf16_bulk[k]) != bits(bf16_to_f32(h[k]));
    bad += f16_as_bf16[k] != f32_to_bf16(f);
    if (!std::isnan(f)) {
      bad += f32_to_f16(f) != h[k];  // exact round trip
      bad += f32_to_bf16(bf16_to_f32(h[k])) != h[k];
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(QuantConvert, RandomBitsScalarVsBulkWithTails) {
  std::mt19937 rng(7);
  std::vector<float> x(100003);
  for (auto& v : x) v = from_bits(static_cast<uint32_t>(rng()));
  for (int i = 0; i < 2000; ++i)
    x[static_cast<size_t>(i)] =
        from_bits(static_cast<uint32_t>(rng()) & 0x807fffffu);  // subnormals
  for (int64_t n : {int64_t{100003}, int64_t{17}, int64_t{5}, int64_t{0}}) {
    std::vector<bf16_t> b(static_cast<size_t>(n) + 1, 0xdead);
    std::vector<f16_t> h(static_cast<size_t>(n) + 1, 0xdead);
    convert_f32_to_bf16(x.data(), b.data(), n);
    convert_f32_to_f16(x.data(), h.data(), n);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      bad += b[static_cast<size_t>(i)] != f32_to_bf16(x[static_cast<size_t>(i)]);
      bad += h[static_cast<size_t>(i)] != f32_to_f16(x[static_cast<size_t>(i)]);
    }
    EXPECT_EQ(bad, 0) << "n=" << n;
    EXPECT_EQ(b[static_cast<size_t>(n)], 0xdead);  // the masked tail stops at n
    EXPECT_EQ(h[static_cast<size_t>(n)], 0xdead);
  }
}

TEST(QuantConvert, FloatDtypesThroughQuantizeAndDequantize) {
  const auto x = gaussian(96, 3);
  for (DType t : {DType::F32, DType::BF16, DType::F16}) {
    const auto stored = quantize(t, x.data(), 96);
    ASSERT_EQ(static_cast<int64_t>(stored.size()), storage_bytes(t, 96));
    std::vector<float> y(40);
    dequantize(t, stored.data(), 96, 50, 40, y.data());
    for (size_t i = 0; i < y.size(); ++i) {
      const float v = x[50 + i];
      const float want = t == DType::F32    ? v
                         : t == DType::BF16 ? bf16_to_f32(f32_to_bf16(v))
                                            : f16_to_f32(f32_to_f16(v));
      EXPECT_EQ(bits(y[i]), bits(want)) << dtype_name(t) << " " << i;
    }
    expect_parity(t, stored, 96, 16, 64);
  }
}

// ---------------------------------------------------------------- fast vs scalar parity

TEST(QuantParity, QuantizedGaussianData) {
  const int64_t n = 256 * 160;  // 640 NF4 blocks: three absmax groups, the last one partial
  auto x = gaussian(n, 11, 0.02f);
  for (int64_t i = 0; i < 64; ++i) x[static_cast<size_t>(1000 + i)] = 0.0f;  // an all-zero block
  x[5000] = 3.0f;                                                            // an outlier
  for (DType t : kQuantTypes) expect_parity_ranges(t, quantize(t, x.data(), n), n);
}

TEST(QuantParity, RandomRawBlocks) {
  const int64_t n = 256 * 160;
  for (DType t : kQuantTypes)
    for (uint32_t seed : {1u, 2u, 3u}) expect_parity_ranges(t, random_raw(t, n, seed), n);
}

// The AVX2 kernels called directly, so a CPU with AVX-512 (where dequantize() takes the AVX-512
// ones) checks them too: bit for bit against the scalar reference, ranges as above, nothing
// written outside the range.
void avx2_dequantize(DType t, const std::vector<uint8_t>& data, int64_t n, int64_t first,
                     int64_t count, float* out) {
  const DTypeInfo& info = dtype_info(t);
  const uint8_t* blocks = data.data() + first / info.block_elems * info.block_bytes;
  const int64_t nblocks = count / info.block_elems;
  switch (t) {
    case DType::NF4:
      return quant::avx2::dequant_nf4(data.data(), n, first, count, out);
    case DType::Q8_0:
      return quant::avx2::dequant_q8_0(blocks, nblocks, out);
    case DType::Q4_0:
      return quant::avx2::dequant_q4_0(blocks, nblocks, out);
    case DType::Q4_1:
      return quant::avx2::dequant_q4_1(blocks, nblocks, out);
    case DType::Q4_K:
      return quant::avx2::dequant_q4_k(blocks, nblocks, out);
    case DType::Q6_K:
      return quant::avx2::dequant_q6_k(blocks, nblocks, out);
    default:
      FAIL() << "no AVX2 dequantizer for " << dtype_name(t);
  }
}

void expect_avx2_parity(DType t, const std::vector<uint8_t>& data, int64_t n) {
  const int64_t blk = dtype_info(t).block_elems;
  const float kGuard = -12345.0f;
  for (auto [first, count] : {std::pair{int64_t{0}, n}, std::pair{blk, n - 2 * blk},
                              std::pair{n - 3 * blk, 3 * blk}, std::pair{5 * blk, blk},
                              std::pair{int64_t{256 * 64}, 300 * 64 / blk * blk}}) {
    SCOPED_TRACE(fmt::format("{} first={} count={}", dtype_name(t), first, count));
    std::vector<float> want(static_cast<size_t>(count)), got(static_cast<size_t>(count) + 32, kGuard);
    ref::dequantize(t, data.data(), n, first, count, want.data());
    avx2_dequantize(t, data, n, first, count, got.data() + 16);
    int64_t bad = 0;
    for (int64_t i = 0; i < count; ++i) {
      const size_t k = static_cast<size_t>(i);
      if (bits(got[k + 16]) != bits(want[k]) && bad++ < 3)
        ADD_FAILURE() << "element " << first + i << ": AVX2 " << got[k + 16] << " ref " << want[k];
    }
    EXPECT_EQ(bad, 0);
    for (size_t k = 0; k < 16; ++k) {
      EXPECT_EQ(bits(got[k]), bits(kGuard));
      EXPECT_EQ(bits(got[k + 16 + static_cast<size_t>(count)]), bits(kGuard));
    }
  }
}

TEST(QuantParity, Avx2KernelsMatchTheScalarReference) {
  if (!quant::use_avx2()) GTEST_SKIP() << "SKIPPED: no AVX2 + FMA + F16C on this CPU";
  const int64_t n = 256 * 160;
  auto x = gaussian(n, 11, 0.02f);
  for (int64_t i = 0; i < 64; ++i) x[static_cast<size_t>(1000 + i)] = 0.0f;
  x[5000] = 3.0f;
  for (DType t : kQuantTypes) {
    expect_avx2_parity(t, quantize(t, x.data(), n), n);
    for (uint32_t seed : {1u, 2u, 3u}) expect_avx2_parity(t, random_raw(t, n, seed), n);
  }
}

// The decode kernels (one activation row, M = 1) read the blocks directly; they must give the
// product with the weights as the scalar dequantizer reads them, here summed in double, up to
// f32 rounding of the sums (relative to sum |w x|), on quantized Gaussian data and on random
// raw blocks (wild scales), for any row range and with accumulation.
TEST(QuantGemv, RowsTimesXMatchTheDequantizedProduct) {
  if (!quant::use_avx2()) GTEST_SKIP() << "SKIPPED: no AVX2 + FMA + F16C on this CPU";
  for (DType t : {DType::NF4, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K}) {
    const int64_t rows = 37, cols = dtype_info(t).block_elems == 256 ? 512 : 576, n = rows * cols;
    const std::vector<float> x = gaussian(cols, 5, 1.0f);
    ASSERT_TRUE(gemv_rows_available(t)) << dtype_name(t);
    for (uint32_t seed : {0u, 1u, 2u}) {
      const std::vector<uint8_t> raw =
          seed == 0 ? quantize(t, gaussian(n, 9, 0.05f).data(), n) : random_raw(t, n, seed);
      std::vector<float> w(static_cast<size_t>(n));
      ref::dequantize(t, raw.data(), n, 0, n, w.data());
      std::vector<float> y(rows, 0.5f), y_acc(rows, 0.5f);
      ASSERT_TRUE(gemv_rows(t, raw.data(), rows, cols, 0, 20, x.data(), y.data(), false));
      ASSERT_TRUE(gemv_rows(t, raw.data(), rows, cols, 20, rows, x.data(), y.data(), false));
      ASSERT_TRUE(gemv_rows(t, raw.data(), rows, cols, 0, rows, x.data(), y_acc.data(), true));
      for (int64_t r = 0; r < rows; ++r) {
        double exact = 0, magnitude = 0;
        for (int64_t k = 0; k < cols; ++k) {
          exact += double(w[r * cols + k]) * double(x[k]);
          magnitude += std::fabs(double(w[r * cols + k]) * double(x[k]));
        }
        const double tol = 1e-5 * magnitude;
        EXPECT_NEAR(y[r], exact, tol) << dtype_name(t) << " seed " << seed << " row " << r;
        EXPECT_NEAR(y_acc[r], 0.5 + exact, tol + 1e-6) << dtype_name(t) << " row " << r;
      }
    }
  }
  EXPECT_FALSE(gemv_rows_available(DType::F32));
  EXPECT_FALSE(gemv_rows_available(DType::BF16));
  float y0 = 0;
  const float x0[64] = {};
  EXPECT_FALSE(gemv_rows(DType::F32, x0, 1, 64, 0, 1, x0, &y0, false));
}

// linear_forward routes a single row on these formats to the row kernels under every precision:
// on an AVX512_BF16 CPU, Auto and BF16 would otherwise take the bf16 route (x rounded to bf16),
// so the results are bit for bit the f32 route's. Elsewhere every precision is the f32 route and
// the comparison could not fail: skipped.
TEST(QuantGemv, SingleRowsTakeTheRowKernelsAtEveryPrecision) {
  if (!cpu_has_avx512_bf16())
    GTEST_SKIP() << "SKIPPED: no AVX512_BF16 here, so BF16 and Auto already run the f32 route";
  if (!quant::use_avx2()) GTEST_SKIP() << "SKIPPED: no AVX2 + FMA + F16C on this CPU";
  for (DType t : {DType::NF4, DType::Q4_1, DType::Q4_K}) {
    const int64_t rows = 64, cols = 512;
    const std::vector<uint8_t> raw =
        quantize(t, gaussian(rows * cols, 3, 0.05f).data(), rows * cols);
    const std::vector<float> x = gaussian(cols, 4, 1.0f);
    const WeightView W{t, raw.data(), rows, cols};
    std::vector<float> y32(rows), y16(rows), yauto(rows);
    linear_forward(x.data(), 1, cols, W, y32.data(), rows, false, Precision::F32);
    linear_forward(x.data(), 1, cols, W, y16.data(), rows, false, Precision::BF16);
    linear_forward(x.data(), 1, cols, W, yauto.data(), rows, false, Precision::Auto);
    EXPECT_EQ(std::memcmp(y32.data(), y16.data(), rows * sizeof(float)), 0) << dtype_name(t);
    EXPECT_EQ(std::memcmp(y32.data(), yauto.data(), rows * sizeof(float)), 0) << dtype_name(t);
  }
}

// ---------------------------------------------------------------- GGUF 32-blocks

TEST(QuantQ8_0, HandDerivedBlock) {
  std::vector<float> x(32, 0.0f);
  const float vals[] = {127.0f, -127.0f, 0.0f, 63.5f, -63.5f, 0.5f, -0.5f, 1.49f};
  std::copy(std::begin(vals), std::end(vals), x.begin());
  const auto q = quantize(DType::Q8_0, x.data(), 32);
  ASSERT_EQ(q.size(), 34u);
  EXPECT_EQ(q[0] | (q[1] << 8), 0x3c00);                    // d = 127 / 127 = 1
  const int8_t want[] = {127, -127, 0, 64, -64, 1, -1, 1};  // round half away from zero
  for (int j = 0; j < 8; ++j)
    EXPECT_EQ(static_cast<int8_t>(q[2 + static_cast<size_t>(j)]), want[j]) << j;
}

TEST(QuantQ4_0, HandDerivedBlock) {
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;
  x[1] = 7.0f;
  x[2] = 0.5f;
  x[3] = -0.5f;
  x[16] = 1.49f;
  x[17] = -7.9f;
  const auto q = quantize(DType::Q4_0, x.data(), 32);
  ASSERT_EQ(q.size(), 18u);
  EXPECT_EQ(q[0] | (q[1] << 8), 0x3c00);  // d = -8 / -8 = 1
  // q = trunc(x + 8.5): element j in the low nibble of byte j, element j+16 in the high nibble.
  EXPECT_EQ(q[2 + 0], 0x0 | (9 << 4));  // x0 = -8 -> 0, x16 = 1.49 -> 9
  EXPECT_EQ(q[2 + 1], 15 | (0 << 4));   // x1 = 7 -> 15, x17 = -7.9 -> 0
  EXPECT_EQ(q[2 + 2], 9 | (8 << 4));    // x2 = 0.5 -> 9, x18 = 0 -> 8
  EXPECT_EQ(q[2 + 3], 8 | (8 << 4));    // x3 = -0.5 -> 8
  // The first element of largest magnitude sets the sign of d: +3 before -3 gives d = -3/8.
  std::vector<float> tie(32, 1.0f);
  tie[2] = 3.0f;
  tie[5] = -3.0f;
  const auto qt = quantize(DType::Q4_0, tie.data(), 32);
  EXPECT_EQ(qt[0] | (qt[1] << 8), f32_to_f16(-0.375f));
}

TEST(QuantQ4_0, RoundsTheExactProductLikeGgufPy) {
  // q = trunc(f32(x * id + 8.5)) with the exact product (gguf-py; ggml when fused into an FMA),
  // not trunc(f32(x * id) + 8.5). Find an x where the two differ: x * id just past -k - 0.5.
  const float m = -1.3f, d = m / -8.0f, id = 1.0f / d;
  auto exact_code = [&](float x) {
    return static_cast<int>(static_cast<float>(static_cast<double>(x) * id + 8.5));
  };
  auto rounded_code = [&](float x) {
    volatile float p = x * id;  // volatile: keep the product rounded even if FMA were enabled
    return static_cast<int>(p + 8.5f);
  };
  float sensitive = 0.0f;
  for (int k = 4; k < 8 && sensitive == 0.0f; ++k) {
    float c = std::nextafter(static_cast<float>((-k - 0.5) / id), -100.0f);
    for (int i = 0; i < 64; ++i) c = std::nextafter(c, -100.0f);  // start 64 ulps below
    for (int i = 0; i <= 128 && sensitive == 0.0f; ++i, c = std::nextafter(c, 100.0f))
      if (exact_code(c) != rounded_code(c)) sensitive = c;
  }
  ASSERT_NE(sensitive, 0.0f) << "no rounding-sensitive value found near the code boundaries";
  std::vector<float> x(32, 0.0f);
  x[0] = m;
  x[1] = sensitive;
  const auto q = quantize(DType::Q4_0, x.data(), 32);
  EXPECT_EQ(q[2 + 1] & 0x0F, exact_code(sensitive)) << "x = " << sensitive;
}

TEST(QuantQ4_1, HandDerivedBlock) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j)
    x[static_cast<size_t>(j)] = static_cast<float>(j % 16) - 1.0f;  // -1..14
  x[5] = 3.4f;  // trunc((3.4 + 1) * 1 + 0.5) = 4
  const auto q = quantize(DType::Q4_1, x.data(), 32);
  ASSERT_EQ(q.size(), 20u);
  EXPECT_EQ(q[0] | (q[1] << 8), 0x3c00);  // d = (14 - -1) / 15 = 1
  EXPECT_EQ(q[2] | (q[3] << 8), 0xbc00);  // m = -1
  for (int j = 0; j < 16; ++j) {
    const int lo = j == 5 ? 4 : j;
    EXPECT_EQ(q[4 + static_cast<size_t>(j)], lo | (j << 4)) << j;
  }
}

TEST(QuantQ32Blocks, RoundTripWithinHalfStep) {
  const int64_t n = 32 * 500;
  const auto x = gaussian(n, 5, 0.1f);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    const auto q = quantize(t, x.data(), n);
    std::vector<float> y(static_cast<size_t>(n));
    dequantize(t, q.data(), n, 0, n, y.data());
    const int64_t bb = dtype_info(t).block_bytes;
    for (int64_t b = 0; b < n / 32; ++b) {
      const float d = std::fabs(f16_to_f32(load_f16(q.data() + b * bb)));
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j)
        amax = std::fmax(amax, std::fabs(x[static_cast<size_t>(b * 32 + j)]));
      // Half a step (a full one for Q4_0, whose top level 7 * d falls one step short of -8 * d on
      // the side opposite the largest value), plus what rounding d and m to f16 moves the levels.
      const float steps = t == DType::Q4_0 ? 1.0f : 0.5f;
      const float bound = steps * d + 4.0f * amax * std::exp2(-11.0f) + 1e-7f;
      for (int j = 0; j < 32; ++j) {
        const auto k = static_cast<size_t>(b * 32 + j);
        ASSERT_LE(std::fabs(y[k] - x[k]), bound) << dtype_name(t) << " element " << k;
      }
    }
  }
}

// ---------------------------------------------------------------- NF4

TEST(QuantNf4, StorageLayoutAndDoubleQuant) {
  const int64_t n = 64 * 600;  // 600 blocks -> groups of 256, 256, 88
  auto x = gaussian(n, 21, 0.05f);
  for (int64_t i = 0; i < 64; ++i) x[static_cast<size_t>(64 * 7 + i)] = 0.0f;
  EXPECT_EQ(nf4_storage_bytes(n), n / 2 + 600 + 4 * 3 + 4);
  const auto q = quantize(DType::NF4, x.data(), n);
  ASSERT_EQ(static_cast<int64_t>(q.size()), nf4_storage_bytes(n));
  const quant::Nf4Layout layout = quant::nf4_layout(q.data(), n);
  std::vector<float> absmax(600);
  double sum = 0.0;
  for (int64_t b = 0; b < 600; ++b) {
    float a = 0.0f;
    for (int64_t i = 0; i < 64; ++i)
      a = std::fmax(a, std::fabs(x[static_cast<size_t>(b * 64 + i)]));
    absmax[static_cast<size_t>(b)] = a;
    sum += a;
  }
  EXPECT_EQ(layout.absmax_mean, static_cast<float>(sum / 600.0));
  for (int64_t g = 0; g < 3; ++g) {
    float scale_stored;
    std::memcpy(&scale_stored, layout.dq_scale + 4 * g, 4);
    float scale = 0.0f;
    for (int64_t b = g * 256; b < std::min<int64_t>(600, g * 256 + 256); ++b)
      scale = std::fmax(scale, std::fabs(absmax[static_cast<size_t>(b)] - layout.absmax_mean));
    EXPECT_EQ(scale_stored, scale) << "group " << g;
    for (int64_t b = g * 256; b < std::min<int64_t>(600, g * 256 + 256); ++b) {
      // The stored absmax is within half an int8 step of the true one.
      const float err =
          std::fabs(quant::nf4_block_absmax(layout, b) - absmax[static_cast<size_t>(b)]);
      EXPECT_LE(err, scale / 254.0f * 1.0001f + 1e-7f) << "block " << b;
      EXPECT_LE(std::abs(static_cast<int>(layout.absmax_q[b])), 127);
    }
  }
}

TEST(QuantNf4, PicksTheNearestCode) {
  const int64_t n = 64 * 200;
  auto x = gaussian(n, 31, 1.0f);
  // Values exactly on midpoints and on codes: v = mid * absmax with absmax = 1 for block 0.
  for (int64_t i = 31; i < 64; ++i)
    x[static_cast<size_t>(i)] = std::fmax(-0.9f, std::fmin(0.9f, x[static_cast<size_t>(i)] * 0.3f));
  x[0] = 1.0f;
  for (int i = 0; i < 15; ++i) {
    const double mid = (static_cast<double>(kNf4Codes[static_cast<size_t>(i)]) +
                        kNf4Codes[static_cast<size_t>(i) + 1]) /
                       2.0;
    x[static_cast<size_t>(1 + i)] = static_cast<float>(mid);
    x[static_cast<size_t>(16 + i)] = kNf4Codes[static_cast<size_t>(i)];
  }
  const auto q = quantize(DType::NF4, x.data(), n);
  int64_t bad = 0;
  for (int64_t b = 0; b < n / 64; ++b) {
    float amax = 0.0f;
    for (int64_t i = 0; i < 64; ++i)
      amax = std::fmax(amax, std::fabs(x[static_cast<size_t>(b * 64 + i)]));
    for (int64_t i = 0; i < 64; ++i) {
      const int64_t e = b * 64 + i;
      const float v = amax > 0.0f ? x[static_cast<size_t>(e)] / amax : 0.0f;
      int best = 0;  // brute force in double, first (lowest) index wins a tie
      for (int c = 1; c < 16; ++c)
        if (std::fabs(static_cast<double>(v) - kNf4Codes[static_cast<size_t>(c)]) <
            std::fabs(static_cast<double>(v) - kNf4Codes[static_cast<size_t>(best)]))
          best = c;
      const uint8_t byte = q[static_cast<size_t>(e / 2)];
      const int code = e % 2 == 0 ? byte >> 4 : byte & 0x0F;
      if (code != best && bad++ < 5)
        ADD_FAILURE() << "element " << e << " v=" << v << " code " << code << " nearest " << best;
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(QuantNf4, RoundTripErrorBound) {
  const int64_t n = 64 * 512;
  const auto x = gaussian(n, 41, 0.03f);
  const auto q = quantize(DType::NF4, x.data(), n);
  std::vector<float> y(static_cast<size_t>(n));
  dequantize(DType::NF4, q.data(), n, 0, n, y.data());
  const quant::Nf4Layout layout = quant::nf4_layout(q.data(), n);
  float max_half_gap = 0.0f;
  for (int i = 0; i < 15; ++i)
    max_half_gap =
        std::fmax(max_half_gap,
                  (kNf4Codes[static_cast<size_t>(i) + 1] - kNf4Codes[static_cast<size_t>(i)]) / 2);
  double se = 0.0, sx = 0.0;
  for (int64_t b = 0; b < n / 64; ++b) {
    float amax = 0.0f;
    for (int64_t i = 0; i < 64; ++i)
      amax = std::fmax(amax, std::fabs(x[static_cast<size_t>(b * 64 + i)]));
    const float stored = quant::nf4_block_absmax(layout, b);
    // Code rounding (at most half the widest gap, in units of absmax) plus the absmax error.
    const float bound = max_half_gap * amax + std::fabs(stored - amax) + 1e-6f * amax;
    for (int64_t i = 0; i < 64; ++i) {
      const auto k = static_cast<size_t>(b * 64 + i);
      ASSERT_LE(std::fabs(y[k] - x[k]), bound) << "element " << k;
      se += (y[k] - x[k]) * (y[k] - x[k]);
      sx += x[k] * x[k];
    }
  }
  const double rel_rmse = std::sqrt(se / sx);
  std::printf("nf4 relative RMSE on gaussian data: %.4f\n", rel_rmse);
  EXPECT_LT(rel_rmse, 0.12);  // 4-bit NormalFloat on gaussian weights lands near 0.09-0.1
}

// ---------------------------------------------------------------- K-quants

double relative_rmse(DType t, const std::vector<float>& x) {
  const auto n = static_cast<int64_t>(x.size());
  const auto q = quantize(t, x.data(), n);
  std::vector<float> y(x.size());
  dequantize(t, q.data(), n, 0, n, y.data());
  double se = 0.0, sx = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    se += (y[i] - x[i]) * (y[i] - x[i]);
    sx += x[i] * x[i];
  }
  return std::sqrt(se / sx);
}

TEST(QuantKQuants, RoundTripErrorRelativeToScale) {
  const auto x = gaussian(256 * 256, 51, 0.02f);
  const double q4k = relative_rmse(DType::Q4_K, x), q6k = relative_rmse(DType::Q6_K, x);
  const double q4_0 = relative_rmse(DType::Q4_0, x), q8_0 = relative_rmse(DType::Q8_0, x);
  std::printf("relative RMSE on gaussian data: q4_0 %.4f  q4_k %.4f  q6_k %.4f  q8_0 %.4f\n", q4_0,
              q4k, q6k, q8_0);
  EXPECT_LT(q4k, 0.10);   // 4.5 bits per weight with fitted scales and mins
  EXPECT_LT(q4k, q4_0);   // and better than the plain 4-bit format
  EXPECT_LT(q6k, 0.025);  // 6.56 bits per weight
  // Shifted / skewed data: the Q4_K min handles an offset, Q6_K is symmetric.
  auto shifted = gaussian(256 * 64, 52, 0.02f);
  for (auto& v : shifted) v = std::fabs(v) + 0.01f;
  EXPECT_LT(relative_rmse(DType::Q4_K, shifted), 0.05);
  EXPECT_LT(relative_rmse(DType::Q6_K, shifted), 0.02);
}

TEST(QuantKQuants, ZeroAndConstantBlocksAreExact) {
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    std::vector<float> x(512, 0.0f);
    for (size_t i = 256; i < 512; ++i) x[i] = 0.25f;
    const auto q = quantize(t, x.data(), 512);
    std::vector<float> y(512);
    dequantize(t, q.data(), 512, 0, 512, y.data());
    for (size_t i = 0; i < 256; ++i) ASSERT_EQ(y[i], 0.0f) << dtype_name(t) << " " << i;
    for (size_t i = 256; i < 512; ++i)
      ASSERT_NEAR(y[i], 0.25f, 0.25f * 2e-3f) << dtype_name(t) << " " << i;
  }
}

TEST(QuantThreads, BytesDoNotDependOnThreadCount) {
  const int64_t n = 256 * 512;  // enough blocks for every quantizer to go parallel
  const auto x = gaussian(n, 61, 0.02f);
  const int threads = omp_get_max_threads();
  for (DType t : kQuantTypes) {
    omp_set_num_threads(1);
    const auto one = quantize(t, x.data(), n);
    omp_set_num_threads(std::max(2, threads));
    const auto many = quantize(t, x.data(), n);
    EXPECT_TRUE(one == many) << dtype_name(t);
  }
  omp_set_num_threads(threads);
}

// ---------------------------------------------------------------- bad arguments

TEST(QuantErrors, BadArgumentsThrow) {
  std::vector<float> x(1024, 1.0f);
  for (DType t : kQuantTypes) {
    const int64_t blk = dtype_info(t).block_elems;
    EXPECT_THROW(quantize(t, x.data(), blk + 1), Error) << dtype_name(t);
    const auto q = quantize(t, x.data(), 512);
    std::vector<float> y(1024);
    std::vector<bf16_t> yb(1024);
    EXPECT_THROW(dequantize(t, q.data(), 512, blk / 2, blk, y.data()), Error) << dtype_name(t);
    EXPECT_THROW(dequantize(t, q.data(), 512, 0, blk + 1, y.data()), Error) << dtype_name(t);
    EXPECT_THROW(dequantize(t, q.data(), 512, blk, 512, y.data()), Error)
        << dtype_name(t);  // past the end
    EXPECT_THROW(dequantize(t, q.data(), 512 + 1, 0, blk, y.data()), Error) << dtype_name(t);
    EXPECT_THROW(dequantize_bf16(t, q.data(), 512, -blk, blk, yb.data()), Error) << dtype_name(t);
    EXPECT_THROW(ref::dequantize(t, q.data(), 512, 0, 1024, y.data()), Error) << dtype_name(t);
  }
  x[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(quantize(DType::Q4_K, x.data(), 256), Error);
  x[3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize(DType::NF4, x.data(), 64), Error);
  EXPECT_NO_THROW(quantize(DType::F16, x.data(), 64));  // plain conversions take inf / NaN
  EXPECT_THROW(nf4_storage_bytes(100), Error);
  try {
    quantize(DType::Q4_0, x.data(), 33);
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q4_0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("33"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
