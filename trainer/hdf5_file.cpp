// HDF5 handles, typed dataset reads/writes and error text (hdf5_file.h).
#include "trainer/hdf5_file.h"

#include <fmt/format.h>
#include <zlib.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "autograd/check.h"

namespace loom {

static_assert(std::endian::native == std::endian::little,
              "checkpoints store little-endian values and checksum the bytes as they are in "
              "memory");

namespace {

// Keeps HDF5 from printing its error stack to stderr while loom's calls run; the stack is read
// into the exception message instead (hdf5_reason).
class QuietHdf5 {
 public:
  QuietHdf5() {
    H5Eget_auto2(H5E_DEFAULT, &old_func_, &old_data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, old_func_, old_data_); }
  QuietHdf5(const QuietHdf5&) = delete;
  QuietHdf5& operator=(const QuietHdf5&) = delete;

 private:
  H5E_auto2_t old_func_ = nullptr;
  void* old_data_ = nullptr;
};

herr_t collect_error(unsigned, const H5E_error2_t* err, void* data) {
  auto* messages = static_cast<std::vector<std::string>*>(data);
  if (err->desc != nullptr && *err->desc != '\0') messages->emplace_back(err->desc);
  return 0;
}

// The outermost and innermost descriptions on HDF5's error stack ("unable to open file:
// truncated file: eof = 1024, ..."), then clears it.
std::string hdf5_reason() {
  std::vector<std::string> messages;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &messages);
  H5Eclear2(H5E_DEFAULT);
  if (messages.empty()) return "no detail from HDF5";
  if (messages.size() == 1 || messages.front() == messages.back()) return messages.front();
  return messages.front() + ": " + messages.back();
}

hid_t checked(hid_t id, const std::string& file, const std::string& what) {
  if (id < 0) throw Error(fmt::format("{}: {} failed: {}", file, what, hdf5_reason()));
  return id;
}

void checked_status(herr_t status, const std::string& file, const std::string& what) {
  if (status < 0) throw Error(fmt::format("{}: {} failed: {}", file, what, hdf5_reason()));
}

uint32_t crc_of(const void* data, size_t bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (bytes > 0) {  // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<size_t>(bytes, 1u << 30));
    crc = crc32(crc, p, chunk);
    p += chunk;
    bytes -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

std::string parent_of(const std::string& name) {
  const size_t slash = name.rfind('/');
  return slash == 0 || slash == std::string::npos ? "/" : name.substr(0, slash);
}

Hdf5Handle dataspace_for(const Shape& shape, const std::string& file) {
  if (shape.empty()) return {checked(H5Screate(H5S_SCALAR), file, "H5Screate"), H5Sclose};
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return {checked(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), file,
                  "H5Screate_simple"),
          H5Sclose};
}

Hdf5Handle vlen_string_type(const std::string& file) {
  Hdf5Handle type(checked(H5Tcopy(H5T_C_S1), file, "H5Tcopy"), H5Tclose);
  checked_status(H5Tset_size(type.get(), H5T_VARIABLE), file, "H5Tset_size");
  checked_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), file, "H5Tset_cset");
  return type;
}

std::string describe_type(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t bits = H5Tget_size(type) * 8;
  const bool big_endian =
      (cls == H5T_FLOAT || cls == H5T_INTEGER) && H5Tget_order(type) == H5T_ORDER_BE;
  std::string name;
  switch (cls) {
    case H5T_FLOAT:
      name = fmt::format("f{}", bits);
      break;
    case H5T_INTEGER:
      name = fmt::format("{}{}", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "i", bits);
      break;
    case H5T_STRING:
      name = H5Tis_variable_str(type) > 0 ? "string" : "fixed-length string";
      break;
    case H5T_COMPOUND:
      name = "compound";
      break;
    default:
      name = fmt::format("HDF5 type class {}", static_cast<int>(cls));
      break;
  }
  return big_endian ? name + " (big-endian)" : name;
}

}  // namespace

// ---- Hdf5Handle ---------------------------------------------------------------------------

Hdf5Handle& Hdf5Handle::operator=(Hdf5Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    closer_ = other.closer_;
    other.id_ = -1;
  }
  return *this;
}

herr_t Hdf5Handle::reset() {
  herr_t status = 0;
  if (id_ >= 0 && closer_ != nullptr) status = closer_(id_);
  id_ = -1;
  return status;
}

// ---- Hdf5Writer ---------------------------------------------------------------------------

Hdf5Writer::Hdf5Writer(std::string path) : path_(std::move(path)) {
  const QuietHdf5 quiet;
  Hdf5Handle fapl(checked(H5Pcreate(H5P_FILE_ACCESS), path_, "H5Pcreate"), H5Pclose);
  // v1.8+ structures: checksummed superblock and object headers.
  checked_status(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), path_,
                 "H5Pset_libver_bounds");
  checked_status(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_SEMI), path_, "H5Pset_fclose_degree");
  // The file is built in memory (the core driver, no backing store) and close() writes it out:
  // HDF5 never does file I/O itself. With the default driver a full disk failed HDF5's flush
  // and left the file open inside the library, whose clean-up at exit then crashed. The buffer
  // comes from the callbacks below, which keep it when HDF5 closes the file, so the bytes written
  // are the ones HDF5 finalized at close (H5Fget_file_image's copy of an open file is no good:
  // in HDF5 1.10 its v2 superblock has the status flags cleared but the old checksum), and no
  // second copy of the file is held.
  checked_status(H5Pset_fapl_core(fapl.get(), size_t{1} << 20, /*backing_store=*/0), path_,
                 "H5Pset_fapl_core");
  H5FD_file_image_callbacks_t callbacks{};
  // Only the core driver's own buffer (FILE_OPEN / FILE_RESIZE / FILE_CLOSE) is tracked; the
  // property-list operations (an image set on a fapl, which loom never does) pass through.
  callbacks.image_malloc = [](size_t size, H5FD_file_image_op_t op, void* udata) -> void* {
    void* memory = std::malloc(size);
    if (op == H5FD_FILE_IMAGE_OP_FILE_OPEN && memory != nullptr) {
      auto* image = static_cast<Image*>(udata);
      std::free(image->memory);
      image->memory = memory;
      image->capacity = size;
    }
    return memory;
  };
  callbacks.image_memcpy = [](void* dest, const void* src, size_t size, H5FD_file_image_op_t,
                              void*) -> void* { return std::memcpy(dest, src, size); };
  callbacks.image_realloc = [](void* ptr, size_t size, H5FD_file_image_op_t, void* udata) -> void* {
    auto* image = static_cast<Image*>(udata);
    void* grown = std::realloc(ptr, size);
    if (grown != nullptr && ptr == image->memory) {
      image->memory = grown;
      image->capacity = size;
    }
    return grown;
  };
  callbacks.image_free = [](void* ptr, H5FD_file_image_op_t op, void* udata) -> herr_t {
    auto* image = static_cast<Image*>(udata);
    if (op == H5FD_FILE_IMAGE_OP_FILE_CLOSE && ptr == image->memory) return 0;  // kept
    if (ptr == image->memory) {
      image->memory = nullptr;
      image->capacity = 0;
    }
    std::free(ptr);
    return 0;
  };
  callbacks.udata_copy = [](void* udata) -> void* { return udata; };
  callbacks.udata_free = [](void*) -> herr_t { return 0; };
  callbacks.udata = image_.get();
  checked_status(H5Pset_file_image_callbacks(fapl.get(), &callbacks), path_,
                 "H5Pset_file_image_callbacks");
  Hdf5Handle fcpl(checked(H5Pcreate(H5P_FILE_CREATE), path_, "H5Pcreate"), H5Pclose);
  checked_status(
      H5Pset_link_creation_order(fcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED), path_,
      "H5Pset_link_creation_order");
  file_ = Hdf5Handle(checked(H5Fcreate(path_.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), path_,
                             "creating the file"),
                     H5Fclose);
  groups_.push_back("/");
}

Hdf5Writer::~Hdf5Writer() {
  const QuietHdf5 quiet;
  file_.reset();
  H5Eclear2(H5E_DEFAULT);
  std::free(image_->memory);
}

void Hdf5Writer::ensure_group(const std::string& group) {
  if (std::find(groups_.begin(), groups_.end(), group) != groups_.end()) return;
  ensure_group(parent_of(group));
  Hdf5Handle gcpl(checked(H5Pcreate(H5P_GROUP_CREATE), path_, "H5Pcreate"), H5Pclose);
  checked_status(
      H5Pset_link_creation_order(gcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED), path_,
      "H5Pset_link_creation_order");
  Hdf5Handle g(checked(H5Gcreate2(file_.get(), group.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT),
                       path_, fmt::format("creating group {}", group)),
               H5Gclose);
  groups_.push_back(group);
}

void Hdf5Writer::create_group(const std::string& name) {
  const QuietHdf5 quiet;
  LOOM_CHECK(file_.valid(), "{}: creating group {} after close()", path_, name);
  ensure_group(name);
}

Hdf5Handle Hdf5Writer::create_dataset(const std::string& name, hid_t file_type, hid_t space) {
  LOOM_CHECK(file_.valid(), "{}: writing {} after close()", path_, name);
  LOOM_CHECK(name.size() > 1 && name.front() == '/' && name.back() != '/',
             "HDF5 dataset name {} must be an absolute path", name);
  ensure_group(parent_of(name));
  return {checked(H5Dcreate2(file_.get(), name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT,
                             H5P_DEFAULT),
                  path_, fmt::format("creating dataset {}", name)),
          H5Dclose};
}

void Hdf5Writer::set_crc(hid_t dataset, uint32_t crc, const std::string& name) {
  Hdf5Handle space(checked(H5Screate(H5S_SCALAR), path_, "H5Screate"), H5Sclose);
  Hdf5Handle attr(
      checked(H5Acreate2(dataset, "crc32", H5T_STD_U32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
              path_, fmt::format("creating the crc32 attribute of {}", name)),
      H5Aclose);
  checked_status(H5Awrite(attr.get(), H5T_NATIVE_UINT32, &crc), path_,
                 fmt::format("writing the crc32 attribute of {}", name));
}

void Hdf5Writer::write_f32(const std::string& name, const Shape& shape, const float* data) {
  const QuietHdf5 quiet;
  Hdf5Handle space = dataspace_for(shape, path_);
  Hdf5Handle ds = create_dataset(name, H5T_IEEE_F32LE, space.get());
  const int64_t n = shape_numel(shape);
  if (n > 0)
    checked_status(H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path_,
                   fmt::format("writing {}", name));
  set_crc(ds.get(), crc_of(data, static_cast<size_t>(n) * sizeof(float)), name);
}

void Hdf5Writer::write_u64(const std::string& name, const std::vector<uint64_t>& values) {
  const QuietHdf5 quiet;
  Hdf5Handle space = dataspace_for({static_cast<int64_t>(values.size())}, path_);
  Hdf5Handle ds = create_dataset(name, H5T_STD_U64LE, space.get());
  if (!values.empty())
    checked_status(
        H5Dwrite(ds.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), path_,
        fmt::format("writing {}", name));
  set_crc(ds.get(), crc_of(values.data(), values.size() * sizeof(uint64_t)), name);
}

void Hdf5Writer::write_u8(const std::string& name, const std::vector<uint8_t>& bytes) {
  const QuietHdf5 quiet;
  Hdf5Handle space = dataspace_for({static_cast<int64_t>(bytes.size())}, path_);
  Hdf5Handle ds = create_dataset(name, H5T_STD_U8LE, space.get());
  if (!bytes.empty())
    checked_status(
        H5Dwrite(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()), path_,
        fmt::format("writing {}", name));
  set_crc(ds.get(), crc_of(bytes.data(), bytes.size()), name);
}

void Hdf5Writer::write_f64_scalar(const std::string& name, double value) {
  const QuietHdf5 quiet;
  Hdf5Handle space = dataspace_for({}, path_);
  Hdf5Handle ds = create_dataset(name, H5T_IEEE_F64LE, space.get());
  checked_status(H5Dwrite(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value),
                 path_, fmt::format("writing {}", name));
  set_crc(ds.get(), crc_of(&value, sizeof value), name);
}

void Hdf5Writer::write_string(const std::string& name, const std::string& text) {
  const QuietHdf5 quiet;
  Hdf5Handle type = vlen_string_type(path_);
  Hdf5Handle space = dataspace_for({}, path_);
  Hdf5Handle ds = create_dataset(name, type.get(), space.get());
  const char* p = text.c_str();
  checked_status(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &p), path_,
                 fmt::format("writing {}", name));
  set_crc(ds.get(), crc_of(text.data(), text.size()), name);
}

void Hdf5Writer::write_i64_attribute(const std::string& object, const std::string& attribute,
                                     int64_t value) {
  const QuietHdf5 quiet;
  Hdf5Handle obj(checked(H5Oopen(file_.get(), object.c_str(), H5P_DEFAULT), path_,
                         fmt::format("opening {}", object)),
                 H5Oclose);
  Hdf5Handle space(checked(H5Screate(H5S_SCALAR), path_, "H5Screate"), H5Sclose);
  Hdf5Handle attr(checked(H5Acreate2(obj.get(), attribute.c_str(), H5T_STD_I64LE, space.get(),
                                     H5P_DEFAULT, H5P_DEFAULT),
                          path_, fmt::format("creating attribute {} of {}", attribute, object)),
                  H5Aclose);
  checked_status(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), path_,
                 fmt::format("writing attribute {} of {}", attribute, object));
}

void Hdf5Writer::close() {
  const QuietHdf5 quiet;
  if (!file_.valid()) return;
  checked_status(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL), path_, "flushing the file");
  // The file's bytes are its first EOA bytes (the buffer is allocated in 1 MiB steps).
  const ssize_t size = H5Fget_file_image(file_.get(), nullptr, 0);
  checked_status(size < 0 ? -1 : 0, path_, "H5Fget_file_image");
  checked_status(file_.reset(), path_, "closing the file");
  if (image_->memory == nullptr || image_->capacity < static_cast<size_t>(size))
    throw Error(
        fmt::format("{}: HDF5 closed the file without handing back its {} bytes", path_, size));
  const auto* bytes = static_cast<const char*>(image_->memory);
  // The bytes go out with plain stdio, each call checked; the caller (save_checkpoint) writes to
  // a temporary name and removes it when this throws.
  std::FILE* f = std::fopen(path_.c_str(), "wb");
  if (f == nullptr)
    throw Error(fmt::format("{}: cannot create the file: {}", path_, std::strerror(errno)));
  const size_t want = static_cast<size_t>(size);
  const size_t written = std::fwrite(bytes, 1, want, f);
  int err = written == want ? 0 : errno;
  if (std::fflush(f) != 0 && err == 0) err = errno;
  if (std::fclose(f) != 0 && err == 0) err = errno;
  std::free(image_->memory);
  image_->memory = nullptr;
  image_->capacity = 0;
  if (err != 0 || written != want)
    throw Error(fmt::format("{}: writing the file failed after {} of {} bytes: {}", path_, written,
                            want, err != 0 ? std::strerror(err) : "short write"));
}

// ---- Hdf5Reader ---------------------------------------------------------------------------

Hdf5Reader::Hdf5Reader(std::string path) : path_(std::move(path)) {
  const QuietHdf5 quiet;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path_, ec))
    throw Error(fmt::format("{}: no such file", path_));
  const hid_t id = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0)
    throw Error(
        fmt::format("{}: cannot be read as an HDF5 file ({}); it is truncated, corrupted "
                    "or not a checkpoint",
                    path_, hdf5_reason()));
  file_ = Hdf5Handle(id, H5Fclose);
}

bool Hdf5Reader::has(const std::string& name) const {
  const QuietHdf5 quiet;
  if (name == "/") return true;
  // H5Lexists fails on a missing intermediate group, so test each prefix.
  for (size_t slash = name.find('/', 1);; slash = name.find('/', slash + 1)) {
    const std::string prefix = name.substr(0, slash);
    if (H5Lexists(file_.get(), prefix.c_str(), H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return false;
    }
    if (slash == std::string::npos) return true;
  }
}

Hdf5DatasetInfo Hdf5Reader::info(const std::string& name) const {
  const QuietHdf5 quiet;
  if (!has(name)) throw Error(fmt::format("{}: dataset {} is missing", path_, name));
  Hdf5Handle ds(checked(H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), path_,
                        fmt::format("opening dataset {}", name)),
                H5Dclose);
  Hdf5Handle type(checked(H5Dget_type(ds.get()), path_, "H5Dget_type"), H5Tclose);
  Hdf5Handle space(checked(H5Dget_space(ds.get()), path_, "H5Dget_space"), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  checked_status(rank, path_, fmt::format("reading the shape of {}", name));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  Hdf5DatasetInfo out;
  out.type = describe_type(type.get());
  for (hsize_t d : dims) out.shape.push_back(static_cast<int64_t>(d));
  return out;
}

std::vector<std::string> Hdf5Reader::members(const std::string& group) const {
  const QuietHdf5 quiet;
  if (!has(group)) throw Error(fmt::format("{}: group {} is missing", path_, group));
  Hdf5Handle g(checked(H5Gopen2(file_.get(), group.c_str(), H5P_DEFAULT), path_,
                       fmt::format("opening group {}", group)),
               H5Gclose);
  H5G_info_t info;
  checked_status(H5Gget_info(g.get(), &info), path_, fmt::format("reading group {}", group));
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(g.get(), ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i,
                                           nullptr, 0, H5P_DEFAULT);
    checked_status(static_cast<herr_t>(len < 0 ? -1 : 0), path_,
                   fmt::format("listing group {} in creation order", group));
    std::string name(static_cast<size_t>(len) + 1, '\0');
    H5Lget_name_by_idx(g.get(), ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i, name.data(), name.size(),
                       H5P_DEFAULT);
    name.resize(static_cast<size_t>(len));
    names.push_back(std::move(name));
  }
  return names;
}

Hdf5Handle Hdf5Reader::open_dataset(const std::string& name,
                                    const std::string& expected_type) const {
  const Hdf5DatasetInfo found = info(name);
  if (found.type != expected_type)
    throw Error(fmt::format("{}: dataset {} has type {}, expected {}", path_, name, found.type,
                            expected_type));
  return {checked(H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), path_,
                  fmt::format("opening dataset {}", name)),
          H5Dclose};
}

void Hdf5Reader::check_crc(hid_t dataset, const std::string& name, const void* data,
                           size_t bytes) const {
  if (H5Aexists(dataset, "crc32") <= 0)
    throw Error(
        fmt::format("{}: dataset {} has no crc32 attribute; the file was not written by "
                    "loom or is damaged",
                    path_, name));
  Hdf5Handle attr(checked(H5Aopen(dataset, "crc32", H5P_DEFAULT), path_,
                          fmt::format("opening the crc32 of {}", name)),
                  H5Aclose);
  uint32_t stored = 0;
  checked_status(H5Aread(attr.get(), H5T_NATIVE_UINT32, &stored), path_,
                 fmt::format("reading the crc32 of {}", name));
  const uint32_t computed = crc_of(data, bytes);
  if (stored != computed)
    throw Error(
        fmt::format("{}: dataset {} is corrupted (crc32 {:08x}, expected {:08x}); use an "
                    "older checkpoint",
                    path_, name, computed, stored));
}

template <class T>
std::vector<T> Hdf5Reader::read_vector(const std::string& name, const std::string& type,
                                       hid_t mem_type, Shape* shape) const {
  const QuietHdf5 quiet;
  Hdf5Handle ds = open_dataset(name, type);
  const Shape found = info(name).shape;
  std::vector<T> values(static_cast<size_t>(shape_numel(found)));
  if (!values.empty())
    checked_status(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), path_,
                   fmt::format("reading dataset {}", name));
  check_crc(ds.get(), name, values.data(), values.size() * sizeof(T));
  if (shape != nullptr) *shape = found;
  return values;
}

std::vector<float> Hdf5Reader::read_f32(const std::string& name, Shape* shape) const {
  return read_vector<float>(name, "f32", H5T_NATIVE_FLOAT, shape);
}

std::vector<uint64_t> Hdf5Reader::read_u64(const std::string& name) const {
  Shape shape;
  std::vector<uint64_t> v = read_vector<uint64_t>(name, "u64", H5T_NATIVE_UINT64, &shape);
  if (shape.size() != 1)
    throw Error(fmt::format("{}: dataset {} has shape {}, expected a 1-D list", path_, name,
                            shape_str(shape)));
  return v;
}

std::vector<uint8_t> Hdf5Reader::read_u8(const std::string& name) const {
  Shape shape;
  std::vector<uint8_t> v = read_vector<uint8_t>(name, "u8", H5T_NATIVE_UINT8, &shape);
  if (shape.size() != 1)
    throw Error(fmt::format("{}: dataset {} has shape {}, expected a 1-D byte string", path_, name,
                            shape_str(shape)));
  return v;
}

double Hdf5Reader::read_f64_scalar(const std::string& name) const {
  Shape shape;
  std::vector<double> v = read_vector<double>(name, "f64", H5T_NATIVE_DOUBLE, &shape);
  if (!shape.empty())
    throw Error(fmt::format("{}: dataset {} has shape {}, expected a scalar", path_, name,
                            shape_str(shape)));
  return v[0];
}

std::string Hdf5Reader::read_string(const std::string& name) const {
  const QuietHdf5 quiet;
  Hdf5Handle ds = open_dataset(name, "string");
  if (!info(name).shape.empty())
    throw Error(fmt::format("{}: dataset {} has shape {}, expected one string", path_, name,
                            shape_str(info(name).shape)));
  Hdf5Handle type = vlen_string_type(path_);
  char* p = nullptr;
  checked_status(H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &p), path_,
                 fmt::format("reading dataset {}", name));
  std::string text = p != nullptr ? std::string(p) : std::string();
  H5free_memory(p);
  check_crc(ds.get(), name, text.data(), text.size());
  return text;
}

bool Hdf5Reader::has_attribute(const std::string& object, const std::string& attribute) const {
  const QuietHdf5 quiet;
  const htri_t exists =
      H5Aexists_by_name(file_.get(), object.c_str(), attribute.c_str(), H5P_DEFAULT);
  H5Eclear2(H5E_DEFAULT);
  return exists > 0;
}

int64_t Hdf5Reader::read_i64_attribute(const std::string& object,
                                       const std::string& attribute) const {
  const QuietHdf5 quiet;
  if (!has_attribute(object, attribute))
    throw Error(fmt::format("{}: attribute {} of {} is missing", path_, attribute, object));
  Hdf5Handle attr(checked(H5Aopen_by_name(file_.get(), object.c_str(), attribute.c_str(),
                                          H5P_DEFAULT, H5P_DEFAULT),
                          path_, fmt::format("opening attribute {} of {}", attribute, object)),
                  H5Aclose);
  Hdf5Handle type(checked(H5Aget_type(attr.get()), path_, "H5Aget_type"), H5Tclose);
  const std::string found = describe_type(type.get());
  if (found != "i64")
    throw Error(fmt::format("{}: attribute {} of {} has type {}, expected i64", path_, attribute,
                            object, found));
  int64_t value = 0;
  checked_status(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), path_,
                 fmt::format("reading attribute {} of {}", attribute, object));
  return value;
}

}  // namespace loom
