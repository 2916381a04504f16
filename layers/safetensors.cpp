// safetensors reader: mapping, header validation, sharded checkpoints (safetensors.h).
#include "layers/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "autograd/check.h"

namespace loom {

using nlohmann::json;
namespace fs = std::filesystem;

struct SafetensorsMapping {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  ~SafetensorsMapping() {
    if (data != nullptr) munmap(const_cast<uint8_t*>(data), size);
  }
};

int64_t safetensors_dtype_size(std::string_view dtype) {
  static const std::pair<std::string_view, int64_t> sizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2},    {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
      {"U16", 2}, {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  for (const auto& [name, size] : sizes)
    if (name == dtype) return size;
  return 0;
}

namespace {

std::shared_ptr<SafetensorsMapping> map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw Error(fmt::format("safetensors: cannot open {}: {}", path, std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(fmt::format("safetensors: cannot stat {}: {}", path, std::strerror(err)));
  }
  auto m = std::make_shared<SafetensorsMapping>();
  m->size = static_cast<uint64_t>(st.st_size);
  if (m->size > 0) {
    void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(fmt::format("safetensors: cannot map {}: {}", path, std::strerror(err)));
    }
    m->data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return m;
}

// One header entry, validated against the data section of `data_size` bytes.
SafetensorsTensorInfo parse_entry(const std::string& path, const std::string& name, const json& e,
                                  uint64_t data_size) {
  auto bad = [&](const std::string& what) {
    return Error(fmt::format("safetensors: {}: tensor '{}': {}", path, name, what));
  };
  if (!e.is_object()) throw bad(fmt::format("entry is {}, expected an object", e.type_name()));
  SafetensorsTensorInfo info;
  info.name = name;
  if (!e.contains("dtype") || !e["dtype"].is_string()) throw bad("no \"dtype\" string");
  info.dtype = e["dtype"].get<std::string>();
  const int64_t elem = safetensors_dtype_size(info.dtype);
  if (elem == 0)
    throw bad(
        fmt::format("unknown dtype '{}' (known: F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 "
                    "U16 U8 BOOL F8_E4M3 F8_E5M2)",
                    info.dtype));
  if (!e.contains("shape") || !e["shape"].is_array()) throw bad("no \"shape\" array");
  int64_t numel = 1;
  for (const json& d : e["shape"]) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      throw bad(
          fmt::format("shape {} has a dim that is not a non-negative integer", e["shape"].dump()));
    info.shape.push_back(d.get<int64_t>());
    numel *= d.get<int64_t>();
  }
  const json* off = e.contains("data_offsets") ? &e["data_offsets"] : nullptr;
  if (off == nullptr || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned())
    throw bad("no \"data_offsets\" pair of non-negative integers");
  info.begin = (*off)[0].get<uint64_t>();
  info.end = (*off)[1].get<uint64_t>();
  if (info.begin > info.end)
    throw bad(fmt::format("data_offsets [{}, {}] run backwards", info.begin, info.end));
  if (info.end > data_size)
    throw bad(
        fmt::format("data_offsets [{}, {}] end past the data section ({} bytes): the file "
                    "is truncated or the header is wrong",
                    info.begin, info.end, data_size));
  const uint64_t expected = static_cast<uint64_t>(numel) * static_cast<uint64_t>(elem);
  if (info.end - info.begin != expected)
    throw bad(fmt::format("holds {} bytes, but shape {} of {} needs {}", info.end - info.begin,
                          shape_str(info.shape), info.dtype, expected));
  return info;
}

DType loom_dtype(const SafetensorsTensorInfo& info, const std::string& path) {
  if (info.dtype == "F32") return DType::F32;
  if (info.dtype == "BF16") return DType::BF16;
  if (info.dtype == "F16") return DType::F16;
  throw Error(fmt::format("safetensors: {}: tensor '{}' has dtype {}; loom loads F32, BF16 and F16",
                          path, info.name, info.dtype));
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.map_ = map_file(path);
  const uint64_t size = f.map_->size;
  if (size < 8)
    throw Error(
        fmt::format("safetensors: {}: file is {} bytes, too short for the 8-byte header "
                    "length (truncated?)",
                    path, size));
  uint64_t header_len = 0;
  std::memcpy(&header_len, f.map_->data, 8);
  if (header_len > size - 8)
    throw Error(
        fmt::format("safetensors: {}: header length {} runs past the end of the file ({} "
                    "bytes): truncated, or not a safetensors file",
                    path, header_len, size));
  const char* header = reinterpret_cast<const char*>(f.map_->data + 8);
  json j;
  try {
    j = json::parse(header, header + header_len);
  } catch (const json::exception& e) {
    throw Error(fmt::format("safetensors: {}: the {}-byte header is not valid JSON: {}", path,
                            header_len, e.what()));
  }
  if (!j.is_object())
    throw Error(fmt::format("safetensors: {}: the header is {}, expected a JSON object", path,
                            j.type_name()));
  f.data_offset_ = 8 + header_len;
  const uint64_t data_size = size - f.data_offset_;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object())
        throw Error(fmt::format("safetensors: {}: __metadata__ is {}, expected an object", path,
                                it.value().type_name()));
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        f.metadata_[m.key()] =
            m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
      continue;
    }
    f.index_[it.key()] = f.tensors_.size();
    f.tensors_.push_back(parse_entry(path, it.key(), it.value(), data_size));
  }
  // No two tensors may share bytes.
  std::vector<const SafetensorsTensorInfo*> by_offset;
  for (const auto& t : f.tensors_)
    if (t.end > t.begin) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw Error(
          fmt::format("safetensors: {}: tensors '{}' and '{}' overlap (bytes [{}, {}) and "
                      "[{}, {}))",
                      path, by_offset[i - 1]->name, by_offset[i]->name, by_offset[i - 1]->begin,
                      by_offset[i - 1]->end, by_offset[i]->begin, by_offset[i]->end));
  return f;
}

const SafetensorsTensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const void* SafetensorsFile::raw_data(const SafetensorsTensorInfo& info) const {
  return map_->data + data_offset_ + info.begin;
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsTensorInfo* info = find(name);
  if (info == nullptr)
    throw Error(fmt::format("safetensors: {}: no tensor named '{}'", path_, name));
  const DType dtype = loom_dtype(*info, path_);
  const int64_t nbytes = static_cast<int64_t>(info->end - info->begin);
  const void* data = raw_data(*info);
  const int64_t elem = safetensors_dtype_size(info->dtype);
  Tensor t;
  if (reinterpret_cast<uintptr_t>(data) % static_cast<uintptr_t>(elem) == 0) {
    auto storage = Storage::borrow(const_cast<void*>(data), nbytes, map_);
    t = Tensor::from_storage(std::move(storage), info->shape, dtype);
  } else {
    auto storage = Storage::allocate(nbytes);
    std::memcpy(storage->data(), data, static_cast<size_t>(nbytes));
    t = Tensor::from_storage(std::move(storage), info->shape, dtype);
  }
  t.set_name(info->name);
  return t;
}

// ---- a whole checkpoint ----------------------------------------------------------------------

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("safetensors: cannot open {}", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

SafetensorsModel SafetensorsModel::open(const std::string& path) {
  SafetensorsModel m;
  m.path_ = path;
  std::string file = path;
  if (fs::is_directory(path)) {
    const fs::path single = fs::path(path) / "model.safetensors";
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(single)) {
      file = single.string();
    } else if (fs::exists(index)) {
      file = index.string();
    } else {
      throw Error(
          fmt::format("safetensors: {} holds neither model.safetensors nor "
                      "model.safetensors.index.json",
                      path));
    }
  }
  auto add_file = [&](SafetensorsFile f) {
    const size_t k = m.files_.size();
    for (const auto& t : f.tensors()) {
      auto [it, fresh] = m.file_of_.emplace(t.name, k);
      if (!fresh)
        throw Error(fmt::format("safetensors: tensor '{}' is in both {} and {}", t.name,
                                m.files_[it->second].path(), f.path()));
    }
    m.files_.push_back(std::move(f));
  };
  if (file.size() < 5 || file.substr(file.size() - 5) != ".json") {
    add_file(SafetensorsFile::open(file));
    return m;
  }
  json j;
  try {
    j = json::parse(read_text(file));
  } catch (const json::exception& e) {
    throw Error(fmt::format("safetensors: {}: not valid JSON: {}", file, e.what()));
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(
        fmt::format("safetensors: {}: no \"weight_map\" object (expected a sharded "
                    "checkpoint index)",
                    file));
  const fs::path dir = fs::path(file).parent_path();
  std::set<std::string> shards;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      throw Error(fmt::format("safetensors: {}: weight_map['{}'] is {}, expected a file name", file,
                              it.key(), it.value().type_name()));
    shards.insert(it.value().get<std::string>());
  }
  for (const std::string& shard : shards) add_file(SafetensorsFile::open((dir / shard).string()));
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    const std::string expected = (dir / it.value().get<std::string>()).string();
    const std::string found = m.file_of(it.key());
    if (found != expected)
      throw Error(fmt::format("safetensors: {}: weight_map puts '{}' in {}, but {}", file, it.key(),
                              expected, found.empty() ? "no shard holds it" : "it is in " + found));
  }
  return m;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  for (const auto& [name, k] : file_of_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsTensorInfo* SafetensorsModel::find(std::string_view name) const {
  auto it = file_of_.find(std::string(name));
  return it == file_of_.end() ? nullptr : files_[it->second].find(name);
}

std::string SafetensorsModel::file_of(std::string_view name) const {
  auto it = file_of_.find(std::string(name));
  return it == file_of_.end() ? std::string() : files_[it->second].path();
}

Tensor SafetensorsModel::tensor(std::string_view name) const {
  auto it = file_of_.find(std::string(name));
  if (it == file_of_.end())
    throw Error(fmt::format("safetensors: {}: no tensor named '{}'", path_, name));
  return files_[it->second].tensor(name);
}

}  // namespace loom
