// Training checkpoints: one HDF5 file per save, `<dir>/checkpoint-<step>.h5`, holding everything
// a resumed run needs to continue bit-identically.
//
// Layout (format version 1):
//   /                          attributes loom_checkpoint_version, step, skipped_steps,
//                              tokens_seen, optimizer_steps (i64)
//   /recipe                    the resolved recipe YAML (variable-length UTF-8 string)
//   /adapters/<name>           f32 tensors, in the order given
//   /optimizer/exp_avg/<name>  f32 AdamW first moment (attribute `step`: the parameter's count)
//   /optimizer/exp_avg_sq/<name>
//   /rng_state                 u64 words
//   /data_position             u8 bytes (the data loader's opaque position)
//   /scalars/<name>            f64 scalars (anything else worth keeping: best eval loss, ...)
// Every dataset has a crc32 attribute (trainer/hdf5_file.h), so a damaged file is an error on
// load, never silently different numbers.
//
// Saving is atomic: the file is built in memory (Hdf5Writer), written as
// `checkpoint-<step>.h5.tmp`, flushed, closed and fsync'ed, then renamed; a failure at any point
// (a full disk included) leaves no file under the final name and removes the temporary. Only
// then are older checkpoints beyond keep_last deleted. While it is written, the whole file is in
// memory once (3x the adapter in f32: the tensors and both AdamW moments).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "trainer/named_tensor.h"
#include "trainer/optimizer.h"

namespace loom {

inline constexpr int64_t kCheckpointFormatVersion = 1;

struct Checkpoint {
  int64_t step = 0;           // optimizer steps completed (including skipped ones)
  int64_t skipped_steps = 0;  // steps skipped for a non-finite loss or gradient
  int64_t tokens_seen = 0;
  NamedTensors adapters;  // f32, contiguous
  AdamWState optimizer;
  std::vector<uint64_t> rng_state;
  std::vector<uint8_t> data_position;
  std::map<std::string, double> scalars;
  std::string recipe_yaml;
};

struct CheckpointSaveOptions {
  int64_t keep_last = 2;  // checkpoints kept in the directory after this save (>= 1)
  // Called after each dataset is written, with its name; an exception thrown here aborts the
  // save like a failed write (tests use it to check that nothing half-written survives).
  std::function<void(const std::string& dataset)> after_dataset;
};

// `<dir>/checkpoint-<step>.h5`.
std::string checkpoint_path(const std::string& dir, int64_t step);
// The step of a file name "checkpoint-<digits>.h5" (no folder), or -1.
int64_t step_of_filename(const std::string& name);

// Writes the checkpoint atomically (creating `dir` if needed), then deletes the oldest other
// checkpoints so that keep_last remain. Returns the path written.
std::string save_checkpoint(const std::string& dir, const Checkpoint& checkpoint,
                            const CheckpointSaveOptions& options = {});

// Reads and validates a checkpoint file: every dataset present with the right type and shape
// and an intact checksum. Errors name the file and the dataset.
Checkpoint load_checkpoint(const std::string& path);

// Complete checkpoints in `dir` (temporary files ignored), by step, oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir);
// The one with the highest step, if any.
std::optional<std::string> latest_checkpoint(const std::string& dir);

// Copies a loaded checkpoint's adapter tensors into `params` (same names and shapes; no more, no
// fewer). `path` names the file in messages.
void restore_adapters(const Checkpoint& checkpoint, const std::string& path,
                      const NamedTensors& params);

}  // namespace loom
