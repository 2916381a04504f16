// Writing an export directory as a whole, so that a failure never leaves a half-written folder
// under the name the user asked for.
//
// StagingDir puts every file into a hidden sibling ".<name>.partial-<pid>" of the final
// directory (same parent, so the same filesystem); each file is flushed and fsynced as it is
// closed. commit() renames the staging directory to the final name -- the one step that makes
// the export visible. Destroying an uncommitted StagingDir (an exception on the way) removes it.
// With replace_existing, an existing final directory is moved aside, the staging directory
// renamed in, and the old one deleted; without it, an existing final path is an error.
//
// Files inside the staging directory are written with AtomicFileWriter (export/atomic_file.h),
// which streams, flushes, fsyncs and checks every step.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

// What an export wrote, for the command to print.
struct ExportReport {
  std::string dir;                 // the final directory
  std::vector<std::string> files;  // names inside it, in the order written
  uint64_t bytes = 0;              // total size of those files
  std::vector<std::string> notes;  // things the user should know (what was synthesized, ...)
};

class StagingDir {
 public:
  // Throws when final_dir exists and replace_existing is off, or when it exists as a file.
  StagingDir(std::string final_dir, bool replace_existing);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const std::string& path() const { return staging_; }  // where files go now
  const std::string& final_path() const { return final_; }
  std::string file(std::string_view name) const;  // path() / name
  // A file inside the staging directory, written, flushed and fsynced; recorded in report().
  void write_text(std::string_view name, std::string_view text);
  void copy_file(const std::string& from, std::string_view name);
  // Records a file the caller wrote to file(name) itself (a streamed one).
  void add_written(std::string_view name, uint64_t bytes);
  // Makes the directory visible under its final name. Call once, after every file is closed.
  void commit();
  const ExportReport& report() const { return report_; }
  ExportReport& report() { return report_; }

 private:
  std::string final_;
  std::string staging_;
  bool replace_existing_ = false;
  bool committed_ = false;
  ExportReport report_;
};

}  // namespace loom
