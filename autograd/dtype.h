// Storage dtypes and their traits: one table says how many elements a block holds and how many
// bytes it takes, for the float types and the block-quantized frozen-weight formats.
//
// GGUF formats keep GGUF's exact byte layout (so a mapped GGUF file is used in place).
// NF4 is loom's QLoRA format; its layout is documented in autograd/quant/nf4.h.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace loom {

enum class DType : uint8_t {
  F32,
  BF16,
  F16,
  NF4,   // QLoRA NormalFloat4, block 64, double-quantized absmax (autograd/quant/nf4.h)
  Q8_0,  // GGUF: f16 d + 32 x int8                          (34 B / 32)
  Q4_0,  // GGUF: f16 d + 16 B nibbles, (q-8)*d              (18 B / 32)
  Q4_1,  // GGUF: f16 d, f16 m + 16 B nibbles, q*d+m         (20 B / 32)
  Q4_K,  // GGUF: 256-weight super-block                     (144 B / 256)
  Q6_K,  // GGUF: 256-weight super-block                     (210 B / 256)
};

struct DTypeInfo {
  std::string_view name;
  int64_t block_elems;   // elements per block (1 for plain floats)
  int64_t block_bytes;   // bytes per block; 0 for NF4, whose size is not per-block (see nf4.h)
  bool quantized;
  int ggml_type;         // GGML type id in GGUF files, -1 if GGUF has none
};

const DTypeInfo& dtype_info(DType t);
inline std::string_view dtype_name(DType t) { return dtype_info(t).name; }
inline bool is_quantized(DType t) { return dtype_info(t).quantized; }

// Bytes needed to store n elements of type t (n must be a multiple of the block size).
int64_t storage_bytes(DType t, int64_t n);

// Parse a dtype name ("f32", "bf16", "q4_k", ...); throws naming the valid ones.
DType parse_dtype(std::string_view name);
// DType for a GGML type id; throws for types loom does not support.
DType dtype_from_ggml(int ggml_type);

}  // namespace loom
