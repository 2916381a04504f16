// Streaming atomic file writes (atomic_file.h).
#include "export/atomic_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "autograd/check.h"
#include "autograd/interrupt.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

constexpr size_t kBufferBytes = size_t{1} << 20;  // writes above this go straight to the file

void fsync_folder(const fs::path& folder) {
  const int fd = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the rename already happened
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path)
    : path_(std::move(path)), tmp_(path_ + ".tmp") {
  const fs::path parent = fs::path(path_).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec || !fs::is_directory(parent))
      throw Error(fmt::format("{}: cannot create the folder {}: {}", path_, parent.string(),
                              ec ? ec.message() : "a file of that name is in the way"));
  }
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw Error(fmt::format("{}: cannot open the temporary file {} for writing: {}", path_, tmp_,
                            std::strerror(errno)));
  buffer_.reserve(kBufferBytes);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!committed_) discard();
}

void AtomicFileWriter::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
}

void AtomicFileWriter::fail(const std::string& what, int err) {
  discard();
  committed_ = true;  // nothing left to clean up
  throw Error(fmt::format("{}: {} the temporary file {} failed: {}{}; no file was written", path_,
                          what, tmp_, std::strerror(err),
                          err == ENOSPC || err == EFBIG ? " (disk full or file too large?)" : ""));
}

void AtomicFileWriter::write_all(const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("writing", errno);
    }
    if (w == 0) fail("writing", ENOSPC);
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFileWriter::flush_buffer() {
  write_all(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFileWriter::write(const void* data, size_t n) {
  LOOM_CHECK(fd_ >= 0 && !committed_, "AtomicFileWriter: write to {} after commit or failure",
             path_);
  throw_if_interrupted();  // Ctrl-C during an export: the destructor removes the temporary
  const char* p = static_cast<const char*>(data);
  if (buffer_.size() + n > kBufferBytes) flush_buffer();
  if (n > kBufferBytes)
    write_all(p, n);  // a large tensor goes straight to the file
  else
    buffer_.append(p, n);
  written_ += n;
}

void AtomicFileWriter::pad_to(uint64_t at) {
  LOOM_CHECK(at >= written_, "AtomicFileWriter: pad_to({}) behind the {} bytes written to {}", at,
             written_, path_);
  static const char zeros[256] = {};
  while (written_ < at) write(zeros, static_cast<size_t>(std::min<uint64_t>(at - written_, 256)));
}

void AtomicFileWriter::commit() {
  LOOM_CHECK(fd_ >= 0 && !committed_, "AtomicFileWriter: commit of {} twice or after a failure",
             path_);
  flush_buffer();
  if (::fsync(fd_) != 0) fail("flushing", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("closing", errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail("renaming", errno);
  committed_ = true;
  fsync_folder(fs::path(path_).parent_path());
}

}  // namespace loom
