// Streaming atomic file writes for exports too large to build in memory first (a merged model is
// hundreds of MB; trainer/run_dir.h write_file_atomic takes the whole text as one string).
//
//   AtomicFileWriter out(path);   // creates <path>.tmp (and the parent folders)
//   out.write(bytes, n); ...      // any number of writes; a short write or an error throws
//   out.commit();                 // flush + fsync, close, rename onto <path>, fsync the folder
//
// If commit() is not reached (an exception from a write, from the caller's own code, or a
// failing fsync/rename), the destructor removes the temporary file: nothing is ever left under
// the final name except a complete file, and an older file of that name stays as it was.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace loom {

class AtomicFileWriter {
 public:
  // Opens <path>.tmp for writing (truncating a stale one). Throws naming the path when the
  // folder cannot be created or the file cannot be opened.
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // Appends n bytes; throws naming both paths on any error (ENOSPC: "disk full?").
  void write(const void* data, size_t n);
  // Appends zero bytes up to absolute offset `at` (at >= bytes_written()).
  void pad_to(uint64_t at);
  uint64_t bytes_written() const { return written_; }

  // Makes the file durable and moves it under its final name. Throws (and removes the
  // temporary) on failure. Calling write() afterwards is an error.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  void write_all(const char* p, size_t n);
  void flush_buffer();
  [[noreturn]] void fail(const std::string& what, int err);
  void discard() noexcept;

  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t written_ = 0;
  std::string buffer_;  // small writes are gathered here (metadata is many tiny fields)
};

}  // namespace loom
