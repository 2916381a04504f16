// The public quantize / dequantize entry points of quant.h: argument checks, then dispatch by
// dtype to the per-format kernels (quant_kernels.h) -- the AVX-512 ones when the CPU has
// AVX512_BF16, else for f32 output the AVX2 ones when it has AVX2 + FMA + F16C, the scalar
// references otherwise, and always the references for loom::ref.
#include "autograd/quant/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "autograd/check.h"
#include "autograd/kernels/cpu.h"
#include "autograd/quant/nf4.h"
#include "autograd/quant/quant_kernels.h"

namespace loom {

bool quant::use_avx512() {
  static const bool ok = cpu_has_avx512_bf16() && cpu_features().f16c;
  return ok;
}

bool quant::use_avx2() {
  static const bool ok = cpu_features().avx2 && cpu_features().fma && cpu_features().f16c;
  return ok;
}

bool gemv_rows_available(DType t) {
  return quant::use_avx2() && (t == DType::NF4 || t == DType::Q8_0 || t == DType::Q4_0 ||
                               t == DType::Q4_1 || t == DType::Q4_K || t == DType::Q6_K);
}

bool gemv_rows(DType t, const void* data, int64_t rows, int64_t cols, int64_t row_begin,
               int64_t row_end, const float* x, float* y, bool accumulate) {
  if (!gemv_rows_available(t)) return false;
  LOOM_CHECK(cols % dtype_info(t).block_elems == 0 && row_begin >= 0 && row_end >= row_begin &&
                 row_end <= rows,
             "gemv_rows: {} x {} weights (block {}), rows [{}, {})", rows, cols,
             dtype_info(t).block_elems, row_begin, row_end);
  return quant::avx2::gemv_rows(t, static_cast<const uint8_t*>(data), rows, cols, row_begin,
                                row_end, x, y, accumulate);
}

const char* quant::dequant_path() {
  return use_avx512() ? "AVX-512" : use_avx2() ? "AVX2" : "scalar";
}

namespace {

using BlockF32Fn = void (*)(const uint8_t*, int64_t, float*);
using BlockBf16Fn = void (*)(const uint8_t*, int64_t, bf16_t*);
using QuantizeFn = void (*)(const float*, int64_t, uint8_t*);

// Kernels of the GGUF block formats, whose blocks are self-contained.
struct BlockKernels {
  QuantizeFn quantize;
  BlockF32Fn ref;
  BlockF32Fn fast_f32;
  BlockBf16Fn fast_bf16;
  BlockF32Fn avx2_f32;
};

const BlockKernels* block_kernels(DType t) {
  using namespace quant;
  static const BlockKernels q8_0{quantize_q8_0, dequant_q8_0_ref, avx512::dequant_q8_0,
                                 avx512::dequant_q8_0, avx2::dequant_q8_0};
  static const BlockKernels q4_0{quantize_q4_0, dequant_q4_0_ref, avx512::dequant_q4_0,
                                 avx512::dequant_q4_0, avx2::dequant_q4_0};
  static const BlockKernels q4_1{quantize_q4_1, dequant_q4_1_ref, avx512::dequant_q4_1,
                                 avx512::dequant_q4_1, avx2::dequant_q4_1};
  static const BlockKernels q4_k{quantize_q4_k, dequant_q4_k_ref, avx512::dequant_q4_k,
                                 avx512::dequant_q4_k, avx2::dequant_q4_k};
  static const BlockKernels q6_k{quantize_q6_k, dequant_q6_k_ref, avx512::dequant_q6_k,
                                 avx512::dequant_q6_k, avx2::dequant_q6_k};
  switch (t) {
    case DType::Q8_0:
      return &q8_0;
    case DType::Q4_0:
      return &q4_0;
    case DType::Q4_1:
      return &q4_1;
    case DType::Q4_K:
      return &q4_k;
    case DType::Q6_K:
      return &q6_k;
    default:
      return nullptr;
  }
}

void check_range(const char* op, DType t, int64_t n_total, int64_t first, int64_t count) {
  const DTypeInfo& info = dtype_info(t);
  const int64_t blk = info.block_elems;
  LOOM_CHECK(n_total >= 0 && n_total % blk == 0,
             "{} {}: stored element count must be a multiple of the block size {}, got {}", op,
             info.name, blk, n_total);
  LOOM_CHECK(first >= 0 && count >= 0 && first % blk == 0 && count % blk == 0,
             "{} {}: range start and length must be non-negative multiples of the block size {}, "
             "got first={} count={}",
             op, info.name, blk, first, count);
  LOOM_CHECK(first + count <= n_total, "{} {}: range [{}, {}) runs past the {} stored elements", op,
             info.name, first, first + count, n_total);
}

const uint8_t* block_ptr(DType t, const void* data, int64_t first) {
  const DTypeInfo& info = dtype_info(t);
  return static_cast<const uint8_t*>(data) + first / info.block_elems * info.block_bytes;
}

// Scalar f32 -> bf16 through a stack buffer, for the bf16 output of the scalar path.
template <class F32Fn>
void bf16_via_f32(int64_t count, bf16_t* out, F32Fn&& f32_chunk) {
  constexpr int64_t kChunk = 1024;  // a multiple of every block size (32, 64, 256)
  float tmp[kChunk];
  for (int64_t done = 0; done < count; done += kChunk) {
    const int64_t len = std::min(kChunk, count - done);
    f32_chunk(done, len, tmp);
    for (int64_t i = 0; i < len; ++i) out[done + i] = f32_to_bf16(tmp[i]);
  }
}

}  // namespace

std::vector<uint8_t> quantize(DType t, const float* x, int64_t n) {
  const DTypeInfo& info = dtype_info(t);
  LOOM_CHECK(n >= 0 && n % info.block_elems == 0,
             "quantize {}: element count must be a non-negative multiple of the block size {}, "
             "got {}",
             info.name, info.block_elems, n);
  std::vector<uint8_t> out(static_cast<size_t>(storage_bytes(t, n)));
  if (info.quantized) {
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(x[i]))
        throw Error(
            fmt::format("quantize {}: element {} is {}; only finite values can be quantized",
                        info.name, i, x[i]));
  }
  switch (t) {
    case DType::F32:
      std::memcpy(out.data(), x, out.size());
      break;
    case DType::BF16:
      convert_f32_to_bf16(x, reinterpret_cast<bf16_t*>(out.data()), n);
      break;
    case DType::F16:
      convert_f32_to_f16(x, reinterpret_cast<f16_t*>(out.data()), n);
      break;
    case DType::NF4:
      quant::quantize_nf4(x, n, out.data());
      break;
    default: {
      const BlockKernels* k = block_kernels(t);
      LOOM_CHECK(k != nullptr, "quantize: no quantizer for dtype {}", info.name);
      // Blocks are independent: quantize chunks of them in parallel (same bytes for any thread
      // count).
      constexpr int64_t kChunkBlocks = 64;
      const int64_t nblocks = n / info.block_elems;
      const int64_t nchunks = (nblocks + kChunkBlocks - 1) / kChunkBlocks;
#pragma omp parallel for schedule(dynamic) if (nchunks > 4)
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t b0 = c * kChunkBlocks;
        k->quantize(x + b0 * info.block_elems, std::min(kChunkBlocks, nblocks - b0),
                    out.data() + b0 * info.block_bytes);
      }
    }
  }
  return out;
}

void dequantize(DType t, const void* data, int64_t n_total, int64_t first, int64_t count,
                float* out) {
  check_range("dequantize", t, n_total, first, count);
  if (count == 0) return;
  const bool avx512 = quant::use_avx512();
  if (!avx512 && !quant::use_avx2() && is_quantized(t))
    return ref::dequantize(t, data, n_total, first, count, out);
  switch (t) {
    case DType::F32:
      std::memcpy(out, static_cast<const float*>(data) + first, static_cast<size_t>(count) * 4);
      return;
    case DType::BF16:
      return convert_bf16_to_f32(static_cast<const bf16_t*>(data) + first, out, count);
    case DType::F16:
      return convert_f16_to_f32(static_cast<const f16_t*>(data) + first, out, count);
    case DType::NF4:
      if (avx512)
        return quant::avx512::dequant_nf4(static_cast<const uint8_t*>(data), n_total, first,
                                          count, out);
      return quant::avx2::dequant_nf4(static_cast<const uint8_t*>(data), n_total, first, count,
                                      out);
    default: {
      const BlockKernels* k = block_kernels(t);
      LOOM_CHECK(k != nullptr, "dequantize: no dequantizer for dtype {}", dtype_name(t));
      (avx512 ? k->fast_f32 : k->avx2_f32)(block_ptr(t, data, first),
                                           count / dtype_info(t).block_elems, out);
    }
  }
}

void dequantize_bf16(DType t, const void* data, int64_t n_total, int64_t first, int64_t count,
                     bf16_t* out) {
  check_range("dequantize_bf16", t, n_total, first, count);
  if (count == 0) return;
  const bool fast = quant::use_avx512();
  switch (t) {
    case DType::F32:
      return convert_f32_to_bf16(static_cast<const float*>(data) + first, out, count);
    case DType::BF16:
      std::memcpy(out, static_cast<const bf16_t*>(data) + first, static_cast<size_t>(count) * 2);
      return;
    case DType::F16: {
      const f16_t* src = static_cast<const f16_t*>(data) + first;
      if (fast) return quant::avx512::convert_f16_to_bf16(src, out, count);
      for (int64_t i = 0; i < count; ++i) out[i] = f32_to_bf16(f16_to_f32(src[i]));
      return;
    }
    case DType::NF4:
      if (fast)
        return quant::avx512::dequant_nf4(static_cast<const uint8_t*>(data), n_total, first, count,
                                          out);
      break;
    default: {
      const BlockKernels* k = block_kernels(t);
      LOOM_CHECK(k != nullptr, "dequantize_bf16: no dequantizer for dtype {}", dtype_name(t));
      if (fast)
        return k->fast_bf16(block_ptr(t, data, first), count / dtype_info(t).block_elems, out);
    }
  }
  bf16_via_f32(count, out, [&](int64_t done, int64_t len, float* tmp) {
    ref::dequantize(t, data, n_total, first + done, len, tmp);
  });
}

namespace ref {

void dequantize(DType t, const void* data, int64_t n_total, int64_t first, int64_t count,
                float* out) {
  check_range("ref::dequantize", t, n_total, first, count);
  if (count == 0) return;
  switch (t) {
    case DType::F32:
      std::memcpy(out, static_cast<const float*>(data) + first, static_cast<size_t>(count) * 4);
      return;
    case DType::BF16: {
      const bf16_t* src = static_cast<const bf16_t*>(data) + first;
      for (int64_t i = 0; i < count; ++i) out[i] = bf16_to_f32(src[i]);
      return;
    }
    case DType::F16: {
      const f16_t* src = static_cast<const f16_t*>(data) + first;
      for (int64_t i = 0; i < count; ++i) out[i] = f16_to_f32(src[i]);
      return;
    }
    case DType::NF4:
      return quant::dequant_nf4_ref(static_cast<const uint8_t*>(data), n_total, first, count, out);
    default: {
      const BlockKernels* k = block_kernels(t);
      LOOM_CHECK(k != nullptr, "ref::dequantize: no dequantizer for dtype {}", dtype_name(t));
      k->ref(block_ptr(t, data, first), count / dtype_info(t).block_elems, out);
    }
  }
}

}  // namespace ref
}  // namespace loom
