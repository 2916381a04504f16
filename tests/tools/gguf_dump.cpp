// loom_test_gguf_dump: prints what loom's GGUF reader sees in a file, as JSON, for
// tests/interop/test_gguf_reader.py to compare with the gguf Python package.
//
//   loom_test_gguf_dump FILE            JSON: header, every metadata key/value, every tensor info
//                                       (with a crc32 of its bytes, read through the loom Tensor)
//   loom_test_gguf_dump --summary FILE  the text summary `loom inspect` prints
#include <zlib.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "autograd/check.h"
#include "layers/gguf.h"

namespace {

using nlohmann::json;

json value_json(const loom::GgufValue& v) {
  return std::visit(
      [](const auto& x) -> json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, loom::GgufArray>) {
          json a = json::array();
          for (const loom::GgufValue& item : x.items) a.push_back(value_json(item));
          return a;
        } else if constexpr (std::is_same_v<T, float>) {
          return static_cast<double>(x);
        } else {
          return x;
        }
      },
      v.variant());
}

uint32_t crc32_of(const loom::Tensor& t, int64_t nbytes) {
  const auto* p = static_cast<const Bytef*>(t.data_bytes());
  uLong crc = crc32(0L, Z_NULL, 0);
  constexpr int64_t kChunk = 1 << 30;  // zlib takes 32-bit lengths
  for (int64_t done = 0; done < nbytes; done += kChunk)
    crc = crc32(crc, p + done, static_cast<uInt>(std::min(kChunk, nbytes - done)));
  return static_cast<uint32_t>(crc);
}

json dump(const loom::GgufFile& f) {
  json out;
  out["path"] = f.path();
  out["version"] = f.version();
  out["alignment"] = f.alignment();
  out["data_offset"] = f.data_offset();
  out["file_size"] = f.file_size();
  json meta = json::array();
  for (const auto& [key, value] : f.metadata()) {
    json m;
    m["key"] = key;
    m["type"] = std::string(loom::gguf_type_name(value.type()));
    if (value.type() == loom::GgufType::ARRAY)
      m["elem_type"] =
          std::string(loom::gguf_type_name(std::get<loom::GgufArray>(value.variant()).elem_type));
    m["value"] = value_json(value);
    meta.push_back(std::move(m));
  }
  out["metadata"] = std::move(meta);
  json tensors = json::array();
  for (const loom::GgufTensorInfo& info : f.tensors()) {
    loom::Tensor t = f.tensor(info);
    json j;
    j["name"] = info.name;
    j["ne"] = info.ne;
    j["shape"] = t.shape();
    j["ggml_type"] = info.ggml_type;
    j["dtype"] = std::string(loom::dtype_name(t.dtype()));
    j["offset"] = info.offset;
    j["abs_offset"] = f.data_offset() + info.offset;
    j["nbytes"] = info.nbytes;
    j["crc32"] = crc32_of(t, info.nbytes);
    tensors.push_back(std::move(j));
  }
  out["tensors"] = std::move(tensors);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool summary = false;
  std::string path;
  int files = 0;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--summary") {
      summary = true;
    } else {
      path = arg;
      ++files;
    }
  }
  if (files != 1) {
    std::fprintf(stderr, "usage: %s [--summary] FILE.gguf\n", argv[0]);
    return 2;
  }
  try {
    loom::GgufFile f = loom::GgufFile::open(path);
    if (summary) {
      std::fputs(loom::format_gguf_summary(loom::summarize_gguf(f)).c_str(), stdout);
    } else {
      std::string text = dump(f).dump();  // throws on strings that are not UTF-8: reported below
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fputc('\n', stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom_test_gguf_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}
