// safetensors files (Hugging Face): a memory-mapped reader of one file and of a sharded
// checkpoint (model.safetensors.index.json naming the shard of each tensor).
//
// Layout: 8 bytes little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"k": "v"}}
// then the data; offsets count from the end of the header. Every entry is validated when the
// file is opened: known dtype, non-negative shape, begin <= end inside the data, end - begin equal
// to the shape's byte size, no two tensors overlapping. Errors name the file (and the tensor),
// with what was expected and what was found.
//
// tensor(name) returns a loom Tensor (F32, BF16 or F16) whose Storage borrows the mapping, like
// GgufFile; the mapping stays alive as long as any tensor does. A tensor whose bytes are not
// aligned to its element size (possible in files from other writers) is copied instead.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "autograd/tensor.h"

namespace loom {

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;  // as stored: "F32", "BF16", "F16", "I64", ...
  Shape shape;
  uint64_t begin = 0;  // byte offsets from the start of the data section
  uint64_t end = 0;
};

// Element size of a safetensors dtype name, 0 if unknown.
int64_t safetensors_dtype_size(std::string_view dtype);

struct SafetensorsMapping;  // the read-only mapping (safetensors.cpp)

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);  // throws loom::Error naming the file

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }  // header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensorInfo* find(std::string_view name) const;  // nullptr if absent
  // The tensor as F32 / BF16 / F16; other dtypes throw naming the tensor and its dtype.
  Tensor tensor(std::string_view name) const;
  // The raw bytes of any tensor (for integer tensors the caller interprets).
  const void* raw_data(const SafetensorsTensorInfo& info) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<SafetensorsMapping> map_;
  uint64_t data_offset_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A whole checkpoint: `path` is a folder (holding model.safetensors or
// model.safetensors.index.json), a .safetensors file, or an index .json file.
class SafetensorsModel {
 public:
  static SafetensorsModel open(const std::string& path);

  const std::string& path() const { return path_; }  // what was opened, for messages
  std::vector<std::string> names() const;            // every tensor, sorted
  bool has(std::string_view name) const { return find(name) != nullptr; }
  const SafetensorsTensorInfo* find(std::string_view name) const;
  std::string file_of(std::string_view name) const;  // the shard holding it ("" if none)
  Tensor tensor(std::string_view name) const;        // throws naming the checkpoint if absent

 private:
  std::string path_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, size_t> file_of_;  // tensor name -> index into files_
};

}  // namespace loom
