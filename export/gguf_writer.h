// GGUF v3 writer: typed metadata (every GGUF value type, arrays included) and tensors of any
// storage dtype GGUF has (f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k), written atomically.
//
// Layout written (little-endian, as layers/gguf.h reads it):
//   "GGUF", version 3, tensor count (u64), metadata count (u64)
//   metadata: key (u64 length + bytes), value type (u32), value
//   tensor infos: name, n_dims (u32), ne[0..n) (u64 each, innermost first: shape reversed),
//                 GGML type (u32), data offset (u64, from the data section, a multiple of the
//                 alignment)
//   zero padding to the alignment, then each tensor's bytes, each padded to the alignment.
// The alignment is the value of general.alignment when set (a power of two), else 32.
//
// Tensors are added with a source that produces their bytes when the file is written, one
// tensor at a time, so a merged model never has to be in memory whole. The file goes to
// <path>.tmp, is flushed and renamed (export/atomic_file.h): a failure anywhere -- a source that
// throws, a write error, a full disk -- leaves no file under the final name.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "autograd/tensor.h"
#include "layers/gguf.h"

namespace loom {

inline constexpr uint32_t kGgufWriteVersion = 3;
inline constexpr uint64_t kGgufDefaultAlignment = 32;
inline constexpr size_t kGgmlMaxNameBytes = 63;  // GGML_MAX_NAME (64) less the terminator

// Produces a tensor's bytes: exactly storage_bytes(dtype, numel) of them, in GGUF's layout.
using GgufTensorSource = std::function<std::vector<uint8_t>()>;

struct GgufWriterTensor {
  std::string name;
  Shape shape;  // PyTorch order ([out, in] for a weight); GGUF's ne is this reversed
  DType dtype = DType::F32;
  GgufTensorSource source;
  int64_t nbytes() const { return storage_bytes(dtype, shape_numel(shape)); }
};

class GgufWriter {
 public:
  // Metadata, kept in the order keys are first set; setting a key again replaces its value in
  // place. Keys must be non-empty; array items must all have the array's element type.
  void set(const std::string& key, GgufValue value);
  void set_string(const std::string& key, std::string value);
  void set_u32(const std::string& key, uint32_t value);
  void set_f32(const std::string& key, float value);
  void set_bool(const std::string& key, bool value);
  // Removes the key if present; returns whether it was.
  bool remove(std::string_view key);
  const GgufValue* find(std::string_view key) const;
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  // From general.alignment (checked: an integer power of two), else 32.
  uint64_t alignment() const;

  // Tensors, written in the order added. Throws on a repeated or over-long name, a shape with
  // no dims or more than 4, a row length (shape.back()) that is not a multiple of the dtype's
  // block, or a dtype GGUF has no id for (NF4).
  void add_tensor(GgufWriterTensor tensor);
  void add_tensor(std::string name, Shape shape, DType dtype, GgufTensorSource source);
  // The bytes of an existing contiguous tensor of any GGUF dtype (copied when written; the
  // Tensor handle keeps its storage alive, e.g. a memory-mapped model).
  void add_tensor(std::string name, const Tensor& tensor);
  // f32 values [shape] stored as `dtype` (quantized when written).
  void add_tensor_values(std::string name, Shape shape, DType dtype, std::vector<float> values);
  const std::vector<GgufWriterTensor>& tensors() const { return tensors_; }

  // Writes the file atomically (see above). Returns the file size in bytes.
  uint64_t write(const std::string& path) const;

 private:
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufWriterTensor> tensors_;
};

// The values of `tensor` (any dtype, contiguous) as f32, row-major.
std::vector<float> tensor_values_f32(const Tensor& tensor);

// llama.cpp's general.file_type (llama_ftype) for a model whose 2-D weights are mostly `dtype`:
// f32 0, f16 1, q4_0 2, q4_1 3, q8_0 7, q4_k 14 (Q4_K_S), q6_k 18, bf16 32.
uint32_t llama_file_type(DType dtype);

}  // namespace loom
