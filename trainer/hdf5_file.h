// A small layer over the HDF5 C API for checkpoints: owned handles, HDF5 errors turned into
// loom::Error naming the file, the dataset and HDF5's own reason, and typed whole-dataset reads
// and writes with exact type checks (a dataset of the wrong type is an error, never a silent
// conversion).
//
// Every dataset written carries a `crc32` attribute over its raw little-endian bytes, checked on
// read: HDF5 checksums its metadata (superblock v2 / object header v2 with libver >= 1.8) but not
// raw data, so this is what catches a flipped byte inside a tensor. Groups track creation order,
// so tensors read back in the order they were written.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "autograd/tensor.h"

namespace loom {

// Owns one hid_t and closes it with the matching H5*close.
class Hdf5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Hdf5Handle() = default;
  Hdf5Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Hdf5Handle(Hdf5Handle&& other) noexcept { *this = std::move(other); }
  Hdf5Handle& operator=(Hdf5Handle&& other) noexcept;
  Hdf5Handle(const Hdf5Handle&) = delete;
  Hdf5Handle& operator=(const Hdf5Handle&) = delete;
  ~Hdf5Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now; returns HDF5's status (negative on failure).
  herr_t reset();

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

// Type of a dataset as loom names it: "f32", "f64", "u8", "u64", "i64", "string", ...
struct Hdf5DatasetInfo {
  std::string type;
  Shape shape;  // {} for a scalar dataset
};

// Builds an HDF5 file in memory and writes it to `path` in close(): HDF5 itself never touches
// the disk, so a full disk is one clean error from close() (hdf5_file.cpp says why).
class Hdf5Writer {
 public:
  // Nothing is created on disk until close().
  explicit Hdf5Writer(std::string path);
  ~Hdf5Writer();
  Hdf5Writer(const Hdf5Writer&) = delete;
  Hdf5Writer& operator=(const Hdf5Writer&) = delete;

  // `name` is an absolute dataset path ("/adapters/blk.0.attn_q.weight.lora_a"); groups on the
  // way are created as needed.
  void write_f32(const std::string& name, const Shape& shape, const float* data);
  void write_u64(const std::string& name, const std::vector<uint64_t>& values);
  void write_u8(const std::string& name, const std::vector<uint8_t>& bytes);
  void write_f64_scalar(const std::string& name, double value);
  void write_string(const std::string& name, const std::string& text);
  // An (empty) group, so that readers find it even when nothing is written into it.
  void create_group(const std::string& name);
  // Integer attribute on an existing object ("/" or a dataset).
  void write_i64_attribute(const std::string& object, const std::string& attribute, int64_t value);
  // Finishes the file and writes it to path() (created or truncated); errors (a full disk)
  // surface here, naming the file. A writer dropped without close() writes nothing.
  void close();

  const std::string& path() const { return path_; }

 private:
  void ensure_group(const std::string& group);
  Hdf5Handle create_dataset(const std::string& name, hid_t file_type, hid_t space);
  void set_crc(hid_t dataset, uint32_t crc, const std::string& name);

  // The core driver's buffer, allocated through file-image callbacks so that it outlives
  // H5Fclose: close() writes the image HDF5 finalized at close (hdf5_file.cpp says why).
  struct Image {
    void* memory = nullptr;
    size_t capacity = 0;
  };

  std::string path_;
  std::unique_ptr<Image> image_ = std::make_unique<Image>();  // its address is the callbacks'
  Hdf5Handle file_;
  std::vector<std::string> groups_;  // created so far
};

class Hdf5Reader {
 public:
  // Opens read-only; a file HDF5 cannot open (missing, truncated, not HDF5) is an error that
  // says so.
  explicit Hdf5Reader(std::string path);

  bool has(const std::string& name) const;  // a link exists at this absolute path
  Hdf5DatasetInfo info(const std::string& name) const;
  // Names of a group's members in creation order.
  std::vector<std::string> members(const std::string& group) const;

  // Whole-dataset reads; the dataset must exist with exactly this type, and its crc32 attribute
  // must match (messages name the file and the dataset).
  std::vector<float> read_f32(const std::string& name, Shape* shape) const;
  std::vector<uint64_t> read_u64(const std::string& name) const;
  std::vector<uint8_t> read_u8(const std::string& name) const;
  double read_f64_scalar(const std::string& name) const;
  std::string read_string(const std::string& name) const;
  bool has_attribute(const std::string& object, const std::string& attribute) const;
  int64_t read_i64_attribute(const std::string& object, const std::string& attribute) const;

  const std::string& path() const { return path_; }

 private:
  Hdf5Handle open_dataset(const std::string& name, const std::string& expected_type) const;
  void check_crc(hid_t dataset, const std::string& name, const void* data, size_t bytes) const;
  template <class T>
  std::vector<T> read_vector(const std::string& name, const std::string& type, hid_t mem_type,
                             Shape* shape) const;

  std::string path_;
  Hdf5Handle file_;
};

}  // namespace loom
