// Streaming safetensors writer (safetensors_writer.h).
#include "export/safetensors_writer.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "autograd/quant/quant.h"
#include "export/atomic_file.h"

namespace loom {

namespace {

std::string_view safetensors_dtype(DType d) {
  if (d == DType::F32) return "F32";
  if (d == DType::BF16) return "BF16";
  LOOM_FAIL("safetensors writer: dtype {} is not written (F32 or BF16)", dtype_name(d));
}

uint64_t entry_bytes(const SafetensorsEntry& e) {
  return static_cast<uint64_t>(shape_numel(e.shape)) * (e.dtype == DType::F32 ? 4 : 2);
}

}  // namespace

std::string safetensors_header(const std::vector<SafetensorsEntry>& entries,
                               const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const SafetensorsEntry& e : entries) {
    LOOM_CHECK(!header.contains(e.name), "safetensors writer: tensor '{}' given twice", e.name);
    const uint64_t bytes = entry_bytes(e);
    header[e.name] = {{"dtype", safetensors_dtype(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                           const std::map<std::string, std::string>& metadata,
                           const std::function<std::vector<float>(size_t)>& values) {
  AtomicFileWriter out(path);
  const std::string header = safetensors_header(entries, metadata);
  out.write(header.data(), header.size());
  std::vector<bf16_t> half;
  for (size_t i = 0; i < entries.size(); ++i) {
    const SafetensorsEntry& e = entries[i];
    const std::vector<float> v = values(i);
    LOOM_CHECK(static_cast<int64_t>(v.size()) == shape_numel(e.shape),
               "safetensors writer: {} values for '{}' {}, expected {}", v.size(), e.name,
               shape_str(e.shape), shape_numel(e.shape));
    if (e.dtype == DType::F32) {
      out.write(v.data(), v.size() * sizeof(float));
    } else {
      half.resize(v.size());
      convert_f32_to_bf16(v.data(), half.data(), static_cast<int64_t>(v.size()));
      out.write(half.data(), half.size() * sizeof(bf16_t));
    }
  }
  const uint64_t bytes = out.bytes_written();
  out.commit();
  return bytes;
}

}  // namespace loom
