// GGUF model files: a memory-mapped reader (versions 2 and 3, little-endian).
//
// A GGUF file is a header, typed key/value metadata, a table of tensor infos, then the tensor
// data, aligned to `general.alignment` (default 32). The file is mapped read-only and each tensor
// is a loom Tensor whose Storage borrows its bytes from the mapping; the mapping stays alive as
// long as the GgufFile or any of its tensors does. Nothing is copied, and writing into a tensor
// taken from a file faults: the frozen base is never written.
//
// Shapes: GGUF stores dims innermost first (ne[0] is the row length). GgufTensorInfo::shape is
// the PyTorch order, ne reversed: a 2-D weight with ne = [in, out] has shape [out, in].
//
// Every error names the file, and the key or tensor, with what was expected and what was found.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "autograd/tensor.h"

namespace loom {

// Metadata value types; the numbers are GGUF's on-disk ids.
enum class GgufType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
std::string_view gguf_type_name(GgufType t);  // "uint32", "string", "array", ...

class GgufValue;

struct GgufArray {
  GgufType elem_type = GgufType::UINT8;
  std::vector<GgufValue> items;  // each item's type is elem_type
  bool operator==(const GgufArray&) const = default;
};

// One metadata value. The variant's alternatives are in GGUF type-id order, so index() is the
// GgufType of the value.
class GgufValue {
 public:
  using Variant = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, GgufArray, uint64_t, int64_t, double>;

  GgufValue() = default;
  explicit GgufValue(Variant v) : v_(std::move(v)) {}

  GgufType type() const { return static_cast<GgufType>(v_.index()); }
  // "uint32", "string", "array of 49152 string", ...
  std::string type_str() const;
  const Variant& variant() const { return v_; }
  bool operator==(const GgufValue&) const = default;  // same type and value (NaN != NaN)

  bool is_integer() const;  // any of uint8..int64
  bool is_float() const;    // float32 or float64

  // Typed access. `what` names the value in errors ("key 'llama.block_count' in models/x.gguf"):
  //   gguf: key 'llama.block_count' in models/x.gguf is a string, expected an integer
  int64_t as_int(std::string_view what) const;   // any integer type that fits in int64
  double as_float(std::string_view what) const;  // float32/64, or an integer
  bool as_bool(std::string_view what) const;
  const std::string& as_string(std::string_view what) const;
  const GgufArray& as_array(std::string_view what) const;
  std::vector<int64_t> as_int_array(std::string_view what) const;
  std::vector<double> as_float_array(std::string_view what) const;
  std::vector<std::string> as_string_array(std::string_view what) const;

  // Short human-readable form for listings: numbers, quoted strings (cut at max_chars), arrays
  // as "[a, b, c, ... (49152 items)]" with at most max_items shown.
  std::string to_display(size_t max_items = 6, size_t max_chars = 60) const;

 private:
  Variant v_;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order, innermost (row length) first
  Shape shape;              // PyTorch order: ne reversed
  int ggml_type = 0;        // GGML type id as stored
  DType dtype = DType::F32;
  uint64_t offset = 0;  // from the start of the data section
  int64_t nbytes = 0;
};

struct MappedFile;  // the read-only mapping (gguf.cpp)

class GgufFile {
 public:
  // Maps and parses `path`; throws loom::Error naming the file on any problem.
  static GgufFile open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the tensor data
  uint64_t file_size() const;

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const GgufValue* find(std::string_view key) const;  // nullptr if absent
  const GgufValue& at(std::string_view key) const;    // throws if absent
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  // "general.architecture" ("llama").
  const std::string& architecture() const { return get_string("general.architecture"); }

  // Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;  // nullptr if absent
  const GgufTensorInfo& tensor_info(std::string_view name) const;  // throws if absent
  // The tensor's bytes as a Tensor (shape in PyTorch order) borrowing the mapping.
  Tensor tensor(std::string_view name) const;
  Tensor tensor(const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;
  std::string key_context(std::string_view key) const;  // "key 'k' in <path>"

  std::string path_;
  std::shared_ptr<MappedFile> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// What `loom inspect` shows about a model file: the architecture's hyper-parameters (every
// "<arch>.*" key), which tokenizer keys are present, and the tensor types.
struct GgufModelSummary {
  std::string path;
  uint32_t version = 0;
  std::string architecture;  // empty if general.architecture is missing
  std::string name;          // general.name, if present
  // general.type = "adapter" (a llama.cpp LoRA adapter): its "adapter.*" keys, and no
  // hyper-parameters or tokenizer (an adapter carries neither).
  bool adapter = false;
  std::vector<std::pair<std::string, std::string>> adapter_keys;
  std::vector<std::pair<std::string, std::string>> hparams;  // "<arch>.*" key -> display value
  struct TokenizerKey {
    std::string key;
    bool present = false;
    std::string value;  // display value, or "" when absent
  };
  // The keys a Llama-family tokenizer is read from, present or not, then any other
  // "tokenizer.*" key the file has.
  std::vector<TokenizerKey> tokenizer_keys;
  std::vector<std::pair<std::string, int64_t>> tensor_type_counts;  // dtype name -> count
  int64_t tensor_count = 0;
  int64_t parameter_count = 0;  // elements over all tensors
  int64_t tensor_bytes = 0;
};

GgufModelSummary summarize_gguf(const GgufFile& file);
// Multi-line text of the summary, as `loom inspect` prints it.
std::string format_gguf_summary(const GgufModelSummary& summary);

}  // namespace loom
