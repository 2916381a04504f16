// Writing safetensors files (the reader and the format's layout are in layers/safetensors.h),
// streamed tensor by tensor: a merged model is written without holding all of it in memory.
//
// Tensors are F32 or BF16 (round to nearest even from the f32 values the caller gives). The
// header lists them in the order given, with contiguous data offsets, padded with spaces to a
// multiple of 8 bytes so every tensor's data stays aligned to its element size.
// Hugging Face transformers refuses a model.safetensors whose metadata lacks "format": "pt",
// so callers put it in.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "autograd/dtype.h"
#include "autograd/tensor.h"

namespace loom {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;  // F32 or BF16
  Shape shape;
};

// The bytes before the data: 8-byte little-endian length, then the JSON header.
std::string safetensors_header(const std::vector<SafetensorsEntry>& entries,
                               const std::map<std::string, std::string>& metadata);

// Writes `path` atomically (export/atomic_file.h: <path>.tmp, flushed, fsynced, renamed).
// values(i) gives entry i's values, row-major, in
// f32; its size must be the shape's element count. Returns the bytes written.
uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                           const std::map<std::string, std::string>& metadata,
                           const std::function<std::vector<float>(size_t)>& values);

}  // namespace loom
