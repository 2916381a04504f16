// Where a run keeps its files (train_loop.h lists them), and finding the checkpoint to resume.
#pragma once

#include <string>

namespace loom {

struct RunPaths {
  std::string dir;
  std::string recipe;       // recipe.yaml
  std::string metrics;      // metrics.jsonl
  std::string checkpoints;  // checkpoints/
  std::string adapter;      // adapter/
  std::string summary;      // summary.json
  static RunPaths of(const std::string& dir);
};

// Writes text to path through a temporary file, flushed and renamed.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace loom
