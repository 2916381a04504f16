// GGUF reader: maps the file, parses header, metadata and tensor infos, validates every size
// against the file, and hands out tensors that borrow the mapping (gguf.h).
#include "layers/gguf.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "autograd/check.h"

namespace loom {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader assumes a little-endian host");

struct MappedFile {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  ~MappedFile() {
    if (data) munmap(const_cast<uint8_t*>(data), size);
  }
};

namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayNesting = 8;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

std::shared_ptr<MappedFile> map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("gguf: cannot open {}: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error(fmt::format("gguf: cannot stat {}: {}", path, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(fmt::format("gguf: {} is not a regular file, expected a .gguf model file", path));
  }
  auto map = std::make_shared<MappedFile>();
  map->size = static_cast<uint64_t>(st.st_size);
  if (map->size > 0) {
    void* p = ::mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error(
          fmt::format("gguf: cannot map {} ({} bytes): {}", path, map->size, std::strerror(err)));
    }
    map->data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  return map;
}

// GGML type names for error messages, including types loom does not read.
std::string ggml_type_label(uint32_t id) {
  // Index = GGML type id; ids 4 and 5 (Q4_2, Q4_3) were removed from GGML.
  // clang-format off
  static constexpr std::string_view kNames[] = {
      "F32",  "F16",  "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
      "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
      "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16"};
  // clang-format on
  if (id < std::size(kNames) && !kNames[id].empty()) return fmt::format("{} ({})", id, kNames[id]);
  if (id == 34) return "34 (TQ1_0)";
  if (id == 35) return "35 (TQ2_0)";
  return fmt::format("{} (unknown)", id);
}

// Bounds-checked little-endian reads over the mapping. Running out of bytes is a truncated file,
// reported with the section and item being read, bytes expected and bytes found.
class Cursor {
 public:
  Cursor(const MappedFile& map, const std::string& path) : map_(map), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return map_.size - pos_; }
  void set_section(std::string_view section) { section_ = section; }

  void need(uint64_t n, std::string_view what) const {
    if (remaining() < n)
      throw Error(
          fmt::format("gguf: {} is truncated in the {} ({}): expected {} bytes at offset {}, "
                      "found {} (file size {})",
                      path_, section_, what, n, pos_, remaining(), map_.size));
  }

  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, map_.data + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(std::string_view what) {
    auto n = read<uint64_t>(fmt::format("{}, string length", what));
    need(n, fmt::format("{}, string of {} bytes", what, n));
    std::string s(reinterpret_cast<const char*>(map_.data + pos_), n);
    pos_ += n;
    return s;
  }

  // Fails as truncated unless `count` items of at least `min_bytes` each can still fit; keeps a
  // corrupt count from turning into a huge allocation.
  void need_items(uint64_t count, uint64_t min_bytes, std::string_view what) const {
    if (min_bytes > 0 && count > remaining() / min_bytes)
      throw Error(
          fmt::format("gguf: {} is truncated in the {} ({}): expected at least {} bytes at "
                      "offset {} ({} bytes each), found {} (file size {})",
                      path_, section_, what,
                      count > std::numeric_limits<uint64_t>::max() / min_bytes
                          ? std::string("over 2^64")
                          : std::to_string(count * min_bytes),
                      pos_, min_bytes, remaining(), map_.size));
  }

  GgufValue read_value(GgufType type, std::string_view what, int depth) {
    switch (type) {
      case GgufType::UINT8:
        return GgufValue(read<uint8_t>(what));
      case GgufType::INT8:
        return GgufValue(read<int8_t>(what));
      case GgufType::UINT16:
        return GgufValue(read<uint16_t>(what));
      case GgufType::INT16:
        return GgufValue(read<int16_t>(what));
      case GgufType::UINT32:
        return GgufValue(read<uint32_t>(what));
      case GgufType::INT32:
        return GgufValue(read<int32_t>(what));
      case GgufType::FLOAT32:
        return GgufValue(read<float>(what));
      case GgufType::BOOL:
        return GgufValue(read<uint8_t>(what) != 0);
      case GgufType::STRING:
        return GgufValue(read_string(what));
      case GgufType::UINT64:
        return GgufValue(read<uint64_t>(what));
      case GgufType::INT64:
        return GgufValue(read<int64_t>(what));
      case GgufType::FLOAT64:
        return GgufValue(read<double>(what));
      case GgufType::ARRAY:
        return GgufValue(read_array(what, depth));
    }
    throw Error(fmt::format("gguf: {}: {} has unknown value type {}", path_, what,
                            static_cast<uint32_t>(type)));
  }

  GgufType read_type(std::string_view what) {
    auto id = read<uint32_t>(fmt::format("{}, value type", what));
    if (id > static_cast<uint32_t>(GgufType::FLOAT64))
      throw Error(
          fmt::format("gguf: {}: {} has value type {}, expected a GGUF value type 0..12 "
                      "(uint8 .. float64); the file is corrupt or newer than this reader",
                      path_, what, id));
    return static_cast<GgufType>(id);
  }

 private:
  static uint64_t min_value_bytes(GgufType t) {
    switch (t) {
      case GgufType::UINT8:
      case GgufType::INT8:
      case GgufType::BOOL:
        return 1;
      case GgufType::UINT16:
      case GgufType::INT16:
        return 2;
      case GgufType::UINT32:
      case GgufType::INT32:
      case GgufType::FLOAT32:
        return 4;
      case GgufType::UINT64:
      case GgufType::INT64:
      case GgufType::FLOAT64:
      case GgufType::STRING:
        return 8;  // the length
      case GgufType::ARRAY:
        return 12;  // element type + count
    }
    return 1;
  }

  GgufArray read_array(std::string_view what, int depth) {
    if (depth >= kMaxArrayNesting)
      throw Error(fmt::format("gguf: {}: {} nests arrays more than {} deep, expected at most {}",
                              path_, what, kMaxArrayNesting, kMaxArrayNesting));
    GgufArray a;
    a.elem_type = read_type(fmt::format("{}, array element", what));
    auto count = read<uint64_t>(fmt::format("{}, array length", what));
    need_items(count, min_value_bytes(a.elem_type),
               fmt::format("{}, array of {} {}", what, count, gguf_type_name(a.elem_type)));
    a.items.reserve(count);
    for (uint64_t i = 0; i < count; ++i)
      a.items.push_back(read_value(a.elem_type, fmt::format("{} item {}", what, i), depth + 1));
    return a;
  }

  const MappedFile& map_;
  const std::string& path_;
  std::string section_ = "header";
  uint64_t pos_ = 0;
};

std::string printable_magic(const uint8_t* p, uint64_t n) {
  std::string text, hex;
  for (uint64_t i = 0; i < n; ++i) {
    text += (p[i] >= 0x20 && p[i] < 0x7f) ? static_cast<char>(p[i]) : '.';
    hex += fmt::format("{}{:02x}", i ? " " : "", p[i]);
  }
  return fmt::format("\"{}\" ({})", text, hex);
}

}  // namespace

GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.path_ = path;
  f.map_ = map_file(path);
  const MappedFile& map = *f.map_;
  Cursor cur(map, f.path_);

  // Header: magic, version, tensor count, metadata count.
  cur.need(4, "magic");
  if (std::memcmp(map.data, "GGUF", 4) != 0)
    throw Error(
        fmt::format("gguf: {} is not a GGUF file: expected magic \"GGUF\" (47 47 55 46) at "
                    "offset 0, found {}",
                    path, printable_magic(map.data, 4)));
  cur.read<uint32_t>("magic");
  f.version_ = cur.read<uint32_t>("version");
  if (f.version_ != 2 && f.version_ != 3) {
    std::string hint;
    if (f.version_ == 1)
      hint =
          "; version 1 files predate GGUF's 64-bit sizes: re-convert the model with a current "
          "llama.cpp";
    else if (f.version_ == 0x02000000u || f.version_ == 0x03000000u)
      hint = "; the file looks big-endian, and loom reads little-endian GGUF only";
    throw Error(fmt::format("gguf: {} has GGUF version {}, expected version 2 or 3{}", path,
                            f.version_, hint));
  }
  auto tensor_count = cur.read<uint64_t>("tensor count");
  auto kv_count = cur.read<uint64_t>("metadata count");

  // Metadata.
  cur.set_section("metadata");
  cur.need_items(kv_count, 8 + 4 + 1, fmt::format("{} key/value pairs", kv_count));
  f.metadata_.reserve(kv_count);
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key = cur.read_string(fmt::format("key #{}", i));
    std::string what = fmt::format("key '{}'", key);
    GgufType type = cur.read_type(what);
    GgufValue value = cur.read_value(type, fmt::format("value of key '{}'", key), 0);
    auto [it, fresh] = f.metadata_index_.emplace(key, f.metadata_.size());
    if (!fresh)
      throw Error(
          fmt::format("gguf: {} has metadata key '{}' twice (pairs #{} and #{}), expected "
                      "each key once",
                      path, key, it->second, i));
    f.metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = f.find("general.alignment")) {
    int64_t align = a->as_int(f.key_context("general.alignment"));
    if (align <= 0 || !std::has_single_bit(static_cast<uint64_t>(align)))
      throw Error(fmt::format("gguf: {} is {}, expected a power of two",
                              f.key_context("general.alignment"), align));
    f.alignment_ = static_cast<uint64_t>(align);
  } else {
    f.alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  cur.set_section("tensor infos");
  cur.need_items(tensor_count, 8 + 4 + 4 + 8, fmt::format("{} tensor infos", tensor_count));
  f.tensors_.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    t.name = cur.read_string(fmt::format("tensor #{} name", i));
    std::string what = fmt::format("tensor #{} '{}'", i, t.name);
    auto n_dims = cur.read<uint32_t>(fmt::format("{}, dim count", what));
    if (n_dims > kMaxDims)
      throw Error(fmt::format("gguf: tensor '{}' in {} has {} dims, expected at most {}", t.name,
                              path, n_dims, kMaxDims));
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      auto ne = cur.read<uint64_t>(fmt::format("{}, dim {}", what, d));
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (ne > 0 && numel > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(ne)))
        throw Error(fmt::format(
            "gguf: tensor '{}' in {} has dim {} = {}, which overflows the element count", t.name,
            path, d, ne));
      t.ne.push_back(static_cast<int64_t>(ne));
      numel *= static_cast<int64_t>(ne);
    }
    t.shape.assign(t.ne.rbegin(), t.ne.rend());
    auto type_id = cur.read<uint32_t>(fmt::format("{}, type", what));
    t.ggml_type = static_cast<int>(type_id);
    try {
      // Ids past int range would alias loom-only dtypes (ggml_type -1) in dtype_from_ggml.
      if (type_id > static_cast<uint32_t>(std::numeric_limits<int>::max()))
        throw Error("the id is out of range");
      t.dtype = dtype_from_ggml(t.ggml_type);
    } catch (const Error& e) {
      throw Error(
          fmt::format("gguf: tensor '{}' in {} has GGML type {}, which loom cannot read: {}",
                      t.name, path, ggml_type_label(type_id), e.what()));
    }
    t.offset = cur.read<uint64_t>(fmt::format("{}, data offset", what));

    const DTypeInfo& info = dtype_info(t.dtype);
    int64_t row = t.ne.empty() ? 1 : t.ne[0];
    if (row % info.block_elems != 0)
      throw Error(
          fmt::format("gguf: tensor '{}' in {} has row length (ne[0]) {}, expected a multiple "
                      "of the {} block size {}",
                      t.name, path, row, info.name, info.block_elems));
    if (numel / info.block_elems > std::numeric_limits<int64_t>::max() / info.block_bytes)
      throw Error(fmt::format("gguf: tensor '{}' in {} has {} elements, too many to address",
                              t.name, path, numel));
    t.nbytes = storage_bytes(t.dtype, numel);
    if (t.offset % f.alignment_ != 0)
      throw Error(
          fmt::format("gguf: tensor '{}' in {} has data offset {}, expected a multiple of the "
                      "alignment {}",
                      t.name, path, t.offset, f.alignment_));

    auto [it, fresh] = f.tensor_index_.emplace(t.name, f.tensors_.size());
    if (!fresh)
      throw Error(
          fmt::format("gguf: {} has tensor '{}' twice (tensor infos #{} and #{}), expected "
                      "unique names",
                      path, t.name, it->second, i));
    f.tensors_.push_back(std::move(t));
  }

  // Tensor data: starts at the next multiple of the alignment; every tensor must lie in the file.
  f.data_offset_ = (cur.pos() + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  const GgufTensorInfo* last = nullptr;
  uint64_t data_end = 0;
  // Writers pack the tensors (each padded to the alignment), so no offset exceeds the padded
  // sizes of all of them together: a larger one in a file too short for it is a corrupt table,
  // not a short file.
  uint64_t packed = 0;
  for (const GgufTensorInfo& t : f.tensors_) {
    const uint64_t padded =
        (static_cast<uint64_t>(t.nbytes) + f.alignment_ - 1) / f.alignment_ * f.alignment_;
    packed = padded > std::numeric_limits<uint64_t>::max() - packed
                 ? std::numeric_limits<uint64_t>::max()
                 : packed + padded;
  }
  for (const GgufTensorInfo& t : f.tensors_) {
    uint64_t room = std::numeric_limits<uint64_t>::max() - f.data_offset_;
    if (t.offset > room || static_cast<uint64_t>(t.nbytes) > room - t.offset)
      throw Error(
          fmt::format("gguf: tensor '{}' in {} has data offset {}, which is past any file size",
                      t.name, path, t.offset));
    uint64_t end = f.data_offset_ + t.offset + static_cast<uint64_t>(t.nbytes);
    if (end > data_end) {
      data_end = end;
      last = &t;
    }
  }
  // No two tensors share bytes (llama.cpp refuses such a file too): a wrong type or shape in
  // the table makes a tensor run into the next one, which would then be read as garbage.
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& t : f.tensors_)
    if (t.nbytes > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& a = *by_offset[i - 1];
    const GgufTensorInfo& b = *by_offset[i];
    if (a.offset + static_cast<uint64_t>(a.nbytes) > b.offset)
      throw Error(fmt::format(
          "gguf: {}: tensor '{}' ({} {}, {} bytes at data offset {}) runs into tensor '{}' at "
          "data offset {}: the tensor table is corrupt (a wrong type or shape?)",
          path, a.name, dtype_name(a.dtype), shape_str(a.shape), a.nbytes, a.offset, b.name,
          b.offset));
  }
  // Only for the message: a file that holds its tensors' bytes loads whatever their offsets.
  if (last && data_end > map.size && last->offset > packed)
    throw Error(fmt::format(
        "gguf: {}: tensor '{}' has data offset {}, past the {} bytes that all {} tensors take "
        "together, and past the end of the file ({} bytes): the tensor table is corrupt",
        path, last->name, last->offset, packed, f.tensors_.size(), map.size));
  if (last && data_end > map.size)
    throw Error(fmt::format(
        "gguf: {} is truncated: tensor '{}' ends at byte {} (data section starts "
        "at {}), expected a file of at least {} bytes, found {} ({} missing)",
        path, last->name, data_end, f.data_offset_, data_end, map.size, data_end - map.size));
  return f;
}

uint64_t GgufFile::file_size() const {
  return map_->size;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor_info(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t)
    throw Error(fmt::format("gguf: tensor '{}' not found in {} ({} tensors)", name, path_,
                            tensors_.size()));
  return *t;
}

Tensor GgufFile::tensor(std::string_view name) const {
  return tensor(tensor_info(name));
}

Tensor GgufFile::tensor(const GgufTensorInfo& info) const {
  const GgufTensorInfo& own = tensor_info(info.name);
  LOOM_CHECK(own.offset == info.offset && own.nbytes == info.nbytes && own.shape == info.shape,
             "GgufFile::tensor: the info for '{}' does not come from {}", info.name, path_);
  // The mapping is read-only; Storage hands out void*, and writes through it fault by design.
  auto* bytes = const_cast<uint8_t*>(map_->data) + data_offset_ + own.offset;
  auto storage = Storage::borrow(bytes, own.nbytes, map_);
  return Tensor::from_storage(std::move(storage), own.shape, own.dtype).set_name(own.name);
}

}  // namespace loom
