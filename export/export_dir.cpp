// Staged, all-or-nothing export directories and the checked file writer (export_dir.h).
#include "export/export_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "autograd/check.h"
#include "export/atomic_file.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

// Makes a rename inside `dir` durable.
void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some filesystems refuse to open directories
  ::fsync(fd);
  ::close(fd);
}

// Removes ".<name>.partial-<pid>" and ".<name>.old-<pid>" folders next to `final_path` that a
// process no longer running left behind (killed, or a second Ctrl-C during an export).
void remove_stale_staging(const fs::path& final_path) {
  const fs::path parent =
      final_path.parent_path().empty() ? fs::path(".") : final_path.parent_path();
  const std::string stem = fmt::format(".{}.", final_path.filename().string());
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(stem, 0) != 0) continue;
    const std::string rest = name.substr(stem.size());
    std::string digits;
    if (rest.rfind("partial-", 0) == 0)
      digits = rest.substr(8);
    else if (rest.rfind("old-", 0) == 0)
      digits = rest.substr(4);
    else
      continue;
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const long pid = std::strtol(digits.c_str(), nullptr, 10);
    if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) {
      std::error_code rm;
      fs::remove_all(e.path(), rm);
    }
  }
}

}  // namespace

// ---- StagingDir ------------------------------------------------------------------------------

StagingDir::StagingDir(std::string final_dir, bool replace_existing)
    : replace_existing_(replace_existing) {
  if (final_dir.empty()) throw Error("export: the output directory name is empty");
  fs::path final_path = fs::path(final_dir).lexically_normal();
  if (!final_path.has_filename()) final_path = final_path.parent_path();  // "out/" -> "out"
  final_ = final_path.string();
  if (fs::exists(final_path)) {
    if (!fs::is_directory(final_path))
      throw Error(
          fmt::format("export: {} exists and is not a directory; choose another output "
                      "path",
                      final_));
    if (!replace_existing_)
      throw Error(
          fmt::format("export: {} already exists; remove it, choose another output path, "
                      "or ask to replace it",
                      final_));
  }
  const fs::path parent = final_path.parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  staging_ =
      (parent / fmt::format(".{}.partial-{}", final_path.filename().string(), ::getpid())).string();
  remove_stale_staging(final_path);
  fs::remove_all(staging_);  // a leftover of a crashed export with the same pid
  fs::create_directory(staging_);
  report_.dir = final_;
}

StagingDir::~StagingDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);  // nothing to do about a failure here; the name says "partial"
}

std::string StagingDir::file(std::string_view name) const {
  return (fs::path(staging_) / std::string(name)).string();
}

void StagingDir::add_written(std::string_view name, uint64_t bytes) {
  report_.files.emplace_back(name);
  report_.bytes += bytes;
}

void StagingDir::write_text(std::string_view name, std::string_view text) {
  AtomicFileWriter out(file(name));
  out.write(text.data(), text.size());
  out.commit();
  add_written(name, text.size());
}

void StagingDir::copy_file(const std::string& from, std::string_view name) {
  std::ifstream in(from, std::ios::binary);
  if (!in) throw Error(fmt::format("export: cannot open {} to copy it", from));
  AtomicFileWriter out(file(name));
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    out.write(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw Error(fmt::format("export: reading {} failed", from));
  out.commit();
  add_written(name, out.bytes_written());
}

void StagingDir::commit() {
  LOOM_CHECK(!committed_, "export: {} committed twice", final_);
  const fs::path final_path(final_);
  fsync_dir(staging_);
  if (fs::exists(final_path)) {
    if (!replace_existing_)  // it appeared while we were writing
      throw Error(
          fmt::format("export: {} appeared while the export was written; the export is "
                      "left out",
                      final_));
    const fs::path old = final_path.parent_path() /
                         fmt::format(".{}.old-{}", final_path.filename().string(), ::getpid());
    fs::remove_all(old);
    fs::rename(final_path, old);
    fs::rename(staging_, final_path);
    committed_ = true;
    fs::remove_all(old);
  } else {
    fs::rename(staging_, final_path);
    committed_ = true;
  }
  fsync_dir(final_path.parent_path());
}

}  // namespace loom
