// GGUF v3 writer (gguf_writer.h): metadata serialization, tensor table, aligned data section.
#include "export/gguf_writer.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <unordered_set>

#include "autograd/check.h"
#include "autograd/quant/quant.h"
#include "export/atomic_file.h"

namespace loom {

static_assert(std::endian::native == std::endian::little,
              "the GGUF writer assumes a little-endian host");

namespace {

constexpr size_t kMaxDims = 4;  // GGML_MAX_DIMS

template <typename T>
void put(std::string& out, T v) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out.append(bytes, sizeof(T));
}

void put_string(std::string& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.append(s);
}

// The value's payload without its type tag (arrays: element type, count, items).
void put_value(std::string& out, const GgufValue& value, const std::string& key) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          put_string(out, x);
        } else if constexpr (std::is_same_v<T, bool>) {
          put<uint8_t>(out, x ? 1 : 0);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          put<uint32_t>(out, static_cast<uint32_t>(x.elem_type));
          put<uint64_t>(out, x.items.size());
          for (size_t i = 0; i < x.items.size(); ++i) {
            if (x.items[i].type() != x.elem_type)
              throw Error(fmt::format(
                  "gguf writer: key '{}': array item {} is {}, expected the array's element type "
                  "{}",
                  key, i, x.items[i].type_str(), gguf_type_name(x.elem_type)));
            put_value(out, x.items[i], key);
          }
        } else {
          put<T>(out, x);
        }
      },
      value.variant());
}

uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}

}  // namespace

// ---- metadata -------------------------------------------------------------------------------

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key.empty()) throw Error("gguf writer: empty metadata key");
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::set_string(const std::string& key, std::string value) {
  set(key, GgufValue(std::move(value)));
}
void GgufWriter::set_u32(const std::string& key, uint32_t value) {
  set(key, GgufValue(value));
}
void GgufWriter::set_f32(const std::string& key, float value) {
  set(key, GgufValue(value));
}
void GgufWriter::set_bool(const std::string& key, bool value) {
  set(key, GgufValue(value));
}

bool GgufWriter::remove(std::string_view key) {
  for (auto it = metadata_.begin(); it != metadata_.end(); ++it) {
    if (it->first == key) {
      metadata_.erase(it);
      return true;
    }
  }
  return false;
}

const GgufValue* GgufWriter::find(std::string_view key) const {
  for (const auto& [k, v] : metadata_)
    if (k == key) return &v;
  return nullptr;
}

uint64_t GgufWriter::alignment() const {
  const GgufValue* v = find("general.alignment");
  if (!v) return kGgufDefaultAlignment;
  const int64_t a = v->as_int("gguf writer: key 'general.alignment'");
  if (a <= 0 || !std::has_single_bit(static_cast<uint64_t>(a)))
    throw Error(
        fmt::format("gguf writer: key 'general.alignment' is {}, expected a power of two", a));
  return static_cast<uint64_t>(a);
}

// ---- tensors --------------------------------------------------------------------------------

void GgufWriter::add_tensor(GgufWriterTensor t) {
  if (t.name.empty() || t.name.size() > kGgmlMaxNameBytes)
    throw Error(
        fmt::format("gguf writer: tensor name '{}' is {} bytes, expected 1..{} (GGML's "
                    "name limit)",
                    t.name, t.name.size(), kGgmlMaxNameBytes));
  for (const GgufWriterTensor& other : tensors_)
    if (other.name == t.name)
      throw Error(fmt::format("gguf writer: tensor '{}' added twice", t.name));
  if (t.shape.empty() || t.shape.size() > kMaxDims)
    throw Error(fmt::format("gguf writer: tensor '{}' has shape {}, expected 1 to {} dims", t.name,
                            shape_str(t.shape), kMaxDims));
  for (int64_t d : t.shape)
    if (d <= 0)
      throw Error(fmt::format("gguf writer: tensor '{}' has shape {}, expected positive dims",
                              t.name, shape_str(t.shape)));
  const DTypeInfo& info = dtype_info(t.dtype);
  if (info.ggml_type < 0)
    throw Error(fmt::format("gguf writer: tensor '{}' is {}, which GGUF has no type for", t.name,
                            info.name));
  if (t.shape.back() % info.block_elems != 0)
    throw Error(fmt::format(
        "gguf writer: tensor '{}' has rows of {} elements (shape {}), expected a multiple of the "
        "{} block size {}",
        t.name, t.shape.back(), shape_str(t.shape), info.name, info.block_elems));
  if (!t.source) throw Error(fmt::format("gguf writer: tensor '{}' has no data source", t.name));
  tensors_.push_back(std::move(t));
}

void GgufWriter::add_tensor(std::string name, Shape shape, DType dtype, GgufTensorSource source) {
  add_tensor(GgufWriterTensor{std::move(name), std::move(shape), dtype, std::move(source)});
}

void GgufWriter::add_tensor(std::string name, const Tensor& tensor) {
  if (!tensor.is_contiguous())
    throw Error(fmt::format("gguf writer: tensor '{}' is not contiguous", name));
  const int64_t nbytes = storage_bytes(tensor.dtype(), tensor.numel());
  add_tensor(std::move(name), tensor.shape(), tensor.dtype(), [tensor, nbytes] {
    const auto* p = static_cast<const uint8_t*>(tensor.data_bytes());
    return std::vector<uint8_t>(p, p + nbytes);
  });
}

void GgufWriter::add_tensor_values(std::string name, Shape shape, DType dtype,
                                   std::vector<float> values) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw Error(fmt::format("gguf writer: tensor '{}' has shape {} ({} values), {} values given",
                            name, shape_str(shape), shape_numel(shape), values.size()));
  auto shared = std::make_shared<const std::vector<float>>(std::move(values));
  add_tensor(std::move(name), std::move(shape), dtype, [shared, dtype] {
    return quantize(dtype, shared->data(), static_cast<int64_t>(shared->size()));
  });
}

// ---- writing --------------------------------------------------------------------------------

uint64_t GgufWriter::write(const std::string& path) const {
  const uint64_t align = alignment();
  std::string header;
  header.append("GGUF", 4);
  put<uint32_t>(header, kGgufWriteVersion);
  put<uint64_t>(header, tensors_.size());
  put<uint64_t>(header, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    put_string(header, key);
    put<uint32_t>(header, static_cast<uint32_t>(value.type()));
    put_value(header, value, key);
  }
  std::vector<uint64_t> offsets;
  uint64_t offset = 0;
  for (const GgufWriterTensor& t : tensors_) {
    put_string(header, t.name);
    put<uint32_t>(header, static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) put<uint64_t>(header, *d);
    put<uint32_t>(header, static_cast<uint32_t>(dtype_info(t.dtype).ggml_type));
    put<uint64_t>(header, offset);
    offsets.push_back(offset);
    offset = align_up(offset + static_cast<uint64_t>(t.nbytes()), align);
  }

  AtomicFileWriter out(path);
  out.write(header.data(), header.size());
  const uint64_t data_start = align_up(header.size(), align);
  out.pad_to(data_start);
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const GgufWriterTensor& t = tensors_[i];
    const std::vector<uint8_t> bytes = t.source();
    if (static_cast<int64_t>(bytes.size()) != t.nbytes())
      throw Error(fmt::format(
          "gguf writer: {}: the source of tensor '{}' ({} {}) gave {} bytes, expected {}", path,
          t.name, dtype_name(t.dtype), shape_str(t.shape), bytes.size(), t.nbytes()));
    LOOM_CHECK(out.bytes_written() == data_start + offsets[i],
               "gguf writer: tensor '{}' at byte {}, expected {}", t.name, out.bytes_written(),
               data_start + offsets[i]);
    out.write(bytes.data(), bytes.size());
    out.pad_to(data_start + align_up(offsets[i] + bytes.size(), align));
  }
  out.commit();
  return out.bytes_written();
}

// ---- helpers --------------------------------------------------------------------------------

std::vector<float> tensor_values_f32(const Tensor& tensor) {
  if (!tensor.is_contiguous())
    throw Error(fmt::format("gguf export: tensor '{}' is not contiguous", tensor.name()));
  std::vector<float> out(static_cast<size_t>(tensor.numel()));
  dequantize(tensor.dtype(), tensor.data_bytes(), tensor.numel(), 0, tensor.numel(), out.data());
  return out;
}

uint32_t llama_file_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 0;
    case DType::F16:
      return 1;
    case DType::Q4_0:
      return 2;
    case DType::Q4_1:
      return 3;
    case DType::Q8_0:
      return 7;
    case DType::Q4_K:
      return 14;
    case DType::Q6_K:
      return 18;
    case DType::BF16:
      return 32;
    case DType::NF4:
      break;
  }
  throw Error(fmt::format("gguf export: {} has no llama.cpp file type", dtype_name(dtype)));
}

}  // namespace loom
