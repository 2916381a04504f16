// Run directory layout and resume lookup (run_dir.h, train_session.h).
#include "trainer/run_dir.h"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "autograd/check.h"
#include "trainer/train_session.h"

namespace loom {

namespace fs = std::filesystem;

RunPaths RunPaths::of(const std::string& dir) {
  RunPaths p;
  p.dir = dir;
  const fs::path d(dir);
  p.recipe = (d / "recipe.yaml").string();
  p.metrics = (d / "metrics.jsonl").string();
  p.checkpoints = (d / "checkpoints").string();
  p.adapter = (d / "adapter").string();
  p.summary = (d / "summary.json").string();
  return p;
}

std::string resume_run_dir(const std::string& resume_from) {
  const fs::path p(resume_from);
  if (fs::is_regular_file(p)) {  // .../checkpoints/checkpoint-N.h5
    const std::string name = p.filename().string();
    if (name.rfind("checkpoint-", 0) != 0 || p.extension() != ".h5")
      throw Error(
          fmt::format("--resume {}: a file, but not a checkpoint (expected a run directory, "
                      "the output.dir of an earlier run, or a checkpoint-<step>.h5 in "
                      "its checkpoints/)",
                      resume_from));
    const fs::path folder = p.parent_path();
    return (folder.filename() == "checkpoints" ? folder.parent_path() : folder).string();
  }
  if (fs::is_directory(p)) {
    if (p.filename() == "checkpoints" || (!p.has_filename() && p.parent_path().filename() == "checkpoints"))
      return p.lexically_normal().parent_path().string();
    return p.string();
  }
  throw Error(fmt::format("--resume {}: no such run directory or checkpoint file (expected "
                          "output.dir of an earlier run, or a checkpoint-<step>.h5 in it)",
                          resume_from));
}

std::string resume_recipe_path(const std::string& resume_from) {
  const std::string path = RunPaths::of(resume_run_dir(resume_from)).recipe;
  if (!fs::exists(path))
    throw Error(fmt::format("--resume {}: {} does not exist, so the run's recipe is unknown; pass "
                            "the recipe too: loom train RECIPE --resume {}",
                            resume_from, path, resume_from));
  return path;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path());
  const std::string tmp = path + ".tmp";
  {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw Error(fmt::format("{}: cannot open for writing", tmp));
    const size_t written = std::fwrite(text.data(), 1, text.size(), f);
    const bool ok = written == text.size() && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
    std::fclose(f);
    if (!ok) {
      std::remove(tmp.c_str());
      throw Error(fmt::format("{}: write failed (disk full?)", tmp));
    }
  }
  fs::rename(tmp, target);
}

}  // namespace loom
