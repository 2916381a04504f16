// Atomic HDF5 checkpoints, keep-last-K pruning and validated loading (checkpoint.h).
#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "autograd/check.h"
#include "trainer/hdf5_file.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "checkpoint-";
constexpr const char* kSuffix = ".h5";
constexpr const char* kTmpSuffix = ".tmp";

void fsync_or_throw(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0));
  if (fd < 0) throw Error(fmt::format("{}: cannot open to sync: {}", path, std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw Error(fmt::format("{}: fsync failed: {}", path, std::strerror(err)));
}

void check_name(const std::string& name, const char* what) {
  LOOM_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..",
             "checkpoint: {} name \"{}\" cannot be an HDF5 dataset name (empty, '/', '.' or '..')",
             what, name);
}

// Refuses, before anything touches the disk, a checkpoint whose parts disagree.
void check_before_save(const Checkpoint& c) {
  std::map<std::string, Shape> shapes;
  for (const NamedTensor& t : c.adapters) {
    check_name(t.name, "adapter tensor");
    LOOM_CHECK(t.tensor.defined() && t.tensor.dtype() == DType::F32 && t.tensor.is_contiguous(),
               "checkpoint: adapter tensor {} must be a contiguous f32 tensor", t.name);
    LOOM_CHECK(shapes.emplace(t.name, t.tensor.shape()).second,
               "checkpoint: adapter tensor {} appears twice", t.name);
  }
  std::set<std::string> seen;
  for (const AdamWParamState& p : c.optimizer.params) {
    auto it = shapes.find(p.name);
    LOOM_CHECK(it != shapes.end(),
               "checkpoint: optimizer state for {}, which is not an adapter "
               "tensor",
               p.name);
    LOOM_CHECK(seen.insert(p.name).second, "checkpoint: optimizer state for {} appears twice",
               p.name);
    const size_t n = static_cast<size_t>(shape_numel(it->second));
    LOOM_CHECK(p.shape == it->second && p.exp_avg.size() == n && p.exp_avg_sq.size() == n,
               "checkpoint: optimizer state for {} has shape {} ({} / {} values), the tensor {}",
               p.name, shape_str(p.shape), p.exp_avg.size(), p.exp_avg_sq.size(),
               shape_str(it->second));
  }
  for (const auto& [name, value] : c.scalars) check_name(name, "scalar");
}

void write_contents(Hdf5Writer& w, const Checkpoint& c,
                    const std::function<void(const std::string&)>& after_dataset) {
  auto done = [&](const std::string& name) {
    if (after_dataset) after_dataset(name);
  };
  w.write_string("/recipe", c.recipe_yaml);
  done("/recipe");
  for (const char* group : {"/adapters", "/optimizer/exp_avg", "/optimizer/exp_avg_sq", "/scalars"})
    w.create_group(group);
  for (const NamedTensor& t : c.adapters) {
    const std::string name = "/adapters/" + t.name;
    w.write_f32(name, t.tensor.shape(), t.tensor.data_f32());
    done(name);
  }
  for (const AdamWParamState& p : c.optimizer.params) {
    const std::string m = "/optimizer/exp_avg/" + p.name, v = "/optimizer/exp_avg_sq/" + p.name;
    w.write_f32(m, p.shape, p.exp_avg.data());
    w.write_i64_attribute(m, "step", p.step);
    done(m);
    w.write_f32(v, p.shape, p.exp_avg_sq.data());
    done(v);
  }
  w.write_u64("/rng_state", c.rng_state);
  done("/rng_state");
  w.write_u8("/data_position", c.data_position);
  done("/data_position");
  for (const auto& [name, value] : c.scalars) {
    w.write_f64_scalar("/scalars/" + name, value);
    done("/scalars/" + name);
  }
  w.write_i64_attribute("/", "loom_checkpoint_version", kCheckpointFormatVersion);
  w.write_i64_attribute("/", "step", c.step);
  w.write_i64_attribute("/", "skipped_steps", c.skipped_steps);
  w.write_i64_attribute("/", "tokens_seen", c.tokens_seen);
  w.write_i64_attribute("/", "optimizer_steps", c.optimizer.steps_taken);
  done("/");
}

// Deletes the oldest checkpoints other than `keep` until keep_last remain, and temporary files a
// crashed save may have left. Failures to delete are not fatal: the new checkpoint is safe.
void prune(const std::string& dir, int64_t keep_last, const std::string& keep) {
  std::vector<std::pair<int64_t, std::string>> all = list_checkpoints(dir);
  int64_t excess = static_cast<int64_t>(all.size()) - keep_last;
  std::error_code ec;
  for (const auto& [step, path] : all) {
    if (excess <= 0) break;
    if (fs::path(path) == fs::path(keep)) continue;
    fs::remove(path, ec);
    --excess;
  }
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::string tmp = std::string(kSuffix) + kTmpSuffix;
    if (name.size() > tmp.size() &&
        step_of_filename(name.substr(0, name.size() - std::strlen(kTmpSuffix))) >= 0 &&
        name.compare(name.size() - tmp.size(), tmp.size(), tmp) == 0)
      fs::remove(e.path(), ec);
  }
}

}  // namespace

int64_t step_of_filename(const std::string& name) {
  const std::string prefix = kPrefix, suffix = kSuffix;
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return -1;
  const std::string digits =
      name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

std::string checkpoint_path(const std::string& dir, int64_t step) {
  return (fs::path(dir) / fmt::format("{}{}{}", kPrefix, step, kSuffix)).string();
}

std::string save_checkpoint(const std::string& dir, const Checkpoint& checkpoint,
                            const CheckpointSaveOptions& options) {
  LOOM_CHECK(options.keep_last >= 1, "checkpoint: keep_last must be >= 1, found {}",
             options.keep_last);
  LOOM_CHECK(checkpoint.step >= 0, "checkpoint: step must be >= 0, found {}", checkpoint.step);
  check_before_save(checkpoint);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw Error(fmt::format("cannot create the checkpoint directory {}: {}", dir,
                            ec ? ec.message() : "a file of that name is in the way"));
  const std::string final_path = checkpoint_path(dir, checkpoint.step);
  const std::string tmp_path = final_path + kTmpSuffix;
  fs::remove(tmp_path, ec);
  try {
    {
      Hdf5Writer writer(tmp_path);
      write_contents(writer, checkpoint, options.after_dataset);
      writer.close();
    }
    fsync_or_throw(tmp_path, false);
    fs::rename(tmp_path, final_path);
  } catch (const fs::filesystem_error& e) {
    fs::remove(tmp_path, ec);
    throw Error(fmt::format("{}: saving the checkpoint failed: {}", final_path, e.what()));
  } catch (...) {
    fs::remove(tmp_path, ec);
    throw;
  }
  // The name is in place; syncing the directory makes the rename itself durable.
  fsync_or_throw(dir, true);
  prune(dir, options.keep_last, final_path);
  return final_path;
}

Checkpoint load_checkpoint(const std::string& path) {
  const Hdf5Reader r(path);
  if (!r.has_attribute("/", "loom_checkpoint_version"))
    throw Error(
        fmt::format("{}: not a loom checkpoint (no loom_checkpoint_version attribute)", path));
  const int64_t version = r.read_i64_attribute("/", "loom_checkpoint_version");
  if (version != kCheckpointFormatVersion)
    throw Error(fmt::format("{}: checkpoint format version {}, this loom reads version {}", path,
                            version, kCheckpointFormatVersion));
  Checkpoint c;
  c.step = r.read_i64_attribute("/", "step");
  c.skipped_steps = r.read_i64_attribute("/", "skipped_steps");
  c.tokens_seen = r.read_i64_attribute("/", "tokens_seen");
  c.optimizer.steps_taken = r.read_i64_attribute("/", "optimizer_steps");
  c.recipe_yaml = r.read_string("/recipe");

  std::map<std::string, Shape> shapes;
  for (const std::string& name : r.members("/adapters")) {
    Shape shape;
    std::vector<float> values = r.read_f32("/adapters/" + name, &shape);
    Tensor t = Tensor::from_vector(shape, values);
    t.set_name(name);
    shapes[name] = shape;
    c.adapters.push_back({name, t});
  }
  {
    const std::vector<std::string> names = r.members("/optimizer/exp_avg");
    const std::vector<std::string> names_sq = r.members("/optimizer/exp_avg_sq");
    for (const std::string& name : names_sq)
      if (std::find(names.begin(), names.end(), name) == names.end())
        throw Error(fmt::format("{}: dataset /optimizer/exp_avg/{} is missing (exp_avg_sq has it)",
                                path, name));
    for (const std::string& name : names) {
      const std::string m = "/optimizer/exp_avg/" + name, v = "/optimizer/exp_avg_sq/" + name;
      auto it = shapes.find(name);
      if (it == shapes.end())
        throw Error(fmt::format("{}: {} has no matching dataset /adapters/{}", path, m, name));
      AdamWParamState p;
      p.name = name;
      p.exp_avg = r.read_f32(m, &p.shape);
      Shape shape_sq;
      p.exp_avg_sq = r.read_f32(v, &shape_sq);
      for (const auto& [dataset, shape] : {std::pair{m, p.shape}, std::pair{v, shape_sq}})
        if (shape != it->second)
          throw Error(
              fmt::format("{}: dataset {} has shape {}, expected {} (the shape of "
                          "/adapters/{})",
                          path, dataset, shape_str(shape), shape_str(it->second), name));
      p.step = r.read_i64_attribute(m, "step");
      c.optimizer.params.push_back(std::move(p));
    }
  }
  c.rng_state = r.read_u64("/rng_state");
  c.data_position = r.read_u8("/data_position");
  for (const std::string& name : r.members("/scalars"))
    c.scalars[name] = r.read_f64_scalar("/scalars/" + name);
  return c;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const int64_t step = step_of_filename(e.path().filename().string());
    if (step >= 0 && e.is_regular_file(ec)) out.emplace_back(step, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> all = list_checkpoints(dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

void restore_adapters(const Checkpoint& checkpoint, const std::string& path,
                      const NamedTensors& params) {
  std::map<std::string, const Tensor*> saved;
  for (const NamedTensor& t : checkpoint.adapters) saved[t.name] = &t.tensor;
  for (const NamedTensor& p : params) {
    auto it = saved.find(p.name);
    if (it == saved.end())
      throw Error(
          fmt::format("{}: dataset /adapters/{} is missing; the checkpoint was made with "
                      "different lora targets or layers",
                      path, p.name));
    const Tensor& src = *it->second;
    if (src.shape() != p.tensor.shape())
      throw Error(
          fmt::format("{}: dataset /adapters/{} has shape {}, the model's parameter has "
                      "{} (a different lora.rank?)",
                      path, p.name, shape_str(src.shape()), shape_str(p.tensor.shape())));
    LOOM_CHECK(p.tensor.dtype() == DType::F32 && p.tensor.is_contiguous(),
               "restore_adapters: parameter {} must be a contiguous f32 tensor", p.name);
    std::memcpy(p.tensor.data_f32(), src.data_f32(),
                static_cast<size_t>(src.numel()) * sizeof(float));
    saved.erase(it);
  }
  if (!saved.empty())
    throw Error(
        fmt::format("{}: holds adapter tensor {} that the model does not have; the "
                    "checkpoint was made with different lora targets or layers",
                    path, saved.begin()->first));
}

}  // namespace loom
