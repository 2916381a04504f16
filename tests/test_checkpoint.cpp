// What a run leaves on disk: HDF5 checkpoints (trainer/checkpoint.h) -- bit-exact round trip,
// atomic writes under injected failures, keep-last-K, latest_checkpoint, and clear errors for
// truncated, corrupted and mismatched files -- and the metrics JSONL / progress line
// (trainer/metrics.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "trainer/checkpoint.h"
#include "trainer/hdf5_file.h"
#include "trainer/metrics.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("loom_ckpt_{}_{}_{}", info->test_suite_name(), info->name(), ::getpid());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::vector<float> pattern(int64_t n, float seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(seed + 0.37f * static_cast<float>(i)) * 3;
  return v;
}

// A checkpoint with every part filled, including awkward values (denormals, -0, NaN payload).
Checkpoint sample_checkpoint(int64_t step, int64_t big = 64) {
  Checkpoint c;
  c.step = step;
  c.skipped_steps = 2;
  c.tokens_seen = 123456789012;
  const std::vector<std::pair<std::string, Shape>> shapes = {
      {"blk.0.attn_q.weight.lora_a", {4, big}},
      {"blk.0.attn_q.weight.lora_b", {big, 4}},
      {"blk.1.ffn_down.weight.dora_m", {big}}};
  float seed = static_cast<float>(step);
  for (const auto& [name, shape] : shapes) {
    std::vector<float> v = pattern(shape_numel(shape), seed += 1);
    v[0] = std::numeric_limits<float>::denorm_min();
    v[1] = -0.0f;
    Tensor t = Tensor::from_vector(shape, v);
    t.set_name(name);
    c.adapters.push_back({name, t});
    AdamWParamState p;
    p.name = name;
    p.shape = shape;
    p.step = step - 1;
    p.exp_avg = pattern(shape_numel(shape), seed + 10);
    p.exp_avg_sq = pattern(shape_numel(shape), seed + 20);
    for (float& x : p.exp_avg_sq) x = x * x;
    c.optimizer.params.push_back(std::move(p));
  }
  c.optimizer.steps_taken = step - 2;
  c.rng_state = {0x0123456789abcdefULL, 0, ~0ULL, 42};
  c.data_position = {0, 1, 2, 255, 128, 7};
  c.scalars = {{"best_eval_loss", 2.718281828459045}, {"ema_loss", 3.25}};
  c.recipe_yaml = "model:\n  path: m.gguf\ntrain:\n  steps: 100  # ünïcode ok\n";
  return c;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  std::vector<uint8_t> b(static_cast<size_t>(t.numel()) * sizeof(float));
  std::memcpy(b.data(), t.data_f32(), b.size());
  return b;
}

std::string load_error(const std::string& path) {
  try {
    load_checkpoint(path);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected loading " << path << " to fail";
  return "";
}

TEST(Checkpoint, RoundTripIsBitExact) {
  TempDir dir;
  const Checkpoint c = sample_checkpoint(30);
  const std::string path = save_checkpoint(dir.str(), c);
  EXPECT_EQ(path, checkpoint_path(dir.str(), 30));
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  const Checkpoint r = load_checkpoint(path);
  EXPECT_EQ(r.step, c.step);
  EXPECT_EQ(r.skipped_steps, c.skipped_steps);
  EXPECT_EQ(r.tokens_seen, c.tokens_seen);
  ASSERT_EQ(r.adapters.size(), c.adapters.size());
  for (size_t i = 0; i < c.adapters.size(); ++i) {
    EXPECT_EQ(r.adapters[i].name, c.adapters[i].name);  // creation order kept
    EXPECT_EQ(r.adapters[i].tensor.shape(), c.adapters[i].tensor.shape());
    EXPECT_EQ(bytes_of(r.adapters[i].tensor), bytes_of(c.adapters[i].tensor));
  }
  EXPECT_EQ(r.optimizer, c.optimizer);  // moments compared as floats, steps, names, shapes
  for (size_t i = 0; i < c.optimizer.params.size(); ++i)
    EXPECT_EQ(
        std::memcmp(r.optimizer.params[i].exp_avg.data(), c.optimizer.params[i].exp_avg.data(),
                    c.optimizer.params[i].exp_avg.size() * sizeof(float)),
        0);
  EXPECT_EQ(r.rng_state, c.rng_state);
  EXPECT_EQ(r.data_position, c.data_position);
  EXPECT_EQ(r.scalars, c.scalars);
  EXPECT_EQ(r.recipe_yaml, c.recipe_yaml);

  // Restoring into model parameters copies the bytes.
  NamedTensors params;
  for (const NamedTensor& t : c.adapters)
    params.push_back({t.name, Tensor::zeros(t.tensor.shape())});
  restore_adapters(r, path, params);
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_EQ(bytes_of(params[i].tensor), bytes_of(c.adapters[i].tensor));
}

TEST(Checkpoint, EmptyPartsRoundTrip) {
  TempDir dir;
  Checkpoint c;
  c.step = 0;
  const std::string path = save_checkpoint(dir.str(), c);
  const Checkpoint r = load_checkpoint(path);
  EXPECT_TRUE(r.adapters.empty());
  EXPECT_TRUE(r.optimizer.params.empty());
  EXPECT_TRUE(r.rng_state.empty());
  EXPECT_TRUE(r.data_position.empty());
  EXPECT_EQ(r.recipe_yaml, "");
}

TEST(Checkpoint, FailedWriteLeavesNoFileUnderTheFinalName) {
  TempDir dir;
  save_checkpoint(dir.str(), sample_checkpoint(10), {.keep_last = 1, .after_dataset = {}});
  const auto before = list_checkpoints(dir.str());
  ASSERT_EQ(before.size(), 1u);

  // Fail after a few datasets, mid-way through the optimizer state.
  int written = 0;
  CheckpointSaveOptions options;
  options.keep_last = 1;
  options.after_dataset = [&](const std::string& name) {
    if (++written == 4) throw Error("injected failure after " + name);
  };
  try {
    save_checkpoint(dir.str(), sample_checkpoint(20), options);
    ADD_FAILURE() << "expected the injected failure";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "injected failure");
  }
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.str(), 20)));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.str(), 20) + ".tmp"));
  // The older checkpoint was not pruned and still loads.
  EXPECT_EQ(list_checkpoints(dir.str()), before);
  EXPECT_EQ(load_checkpoint(before[0].second).step, 10);
  EXPECT_EQ(latest_checkpoint(dir.str()), before[0].second);

  // A failure on the last step (root attributes) too.
  options.after_dataset = [](const std::string& name) {
    if (name == "/") throw Error("injected failure at the end");
  };
  EXPECT_THROW(save_checkpoint(dir.str(), sample_checkpoint(30), options), Error);
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.str(), 30)));
  EXPECT_EQ(list_checkpoints(dir.str()), before);
}

// A full disk: /dev/full fails every write with ENOSPC. The writer reports it naming the file,
// and HDF5 is left with nothing open (with its default driver the failed flush left the file
// registered and the library's clean-up crashed at exit: this binary would have died after the
// tests, with a segfault).
TEST(Checkpoint, FullDiskIsACleanError) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "SKIPPED: no /dev/full on this system";
  const Checkpoint c = sample_checkpoint(4, 8);
  try {
    Hdf5Writer w("/dev/full");
    for (const NamedTensor& t : c.adapters)
      w.write_f32("/adapters/" + t.name, t.tensor.shape(), t.tensor.data_f32());
    w.close();
    ADD_FAILURE() << "writing to /dev/full succeeded";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "/dev/full: writing the file failed after");
    EXPECT_HAS(e.what(), std::strerror(ENOSPC));
  }
  // A writer dropped before close() (as when a write throws mid-way) leaves no file behind and
  // nothing open: the next one works.
  TempDir dir;
  {
    Hdf5Writer w(dir / "never.h5");
    w.write_u8("/x", {1, 2, 3});
  }
  EXPECT_FALSE(fs::exists(dir / "never.h5"));
  save_checkpoint(dir.str(), c, {.keep_last = 1, .after_dataset = {}});
  EXPECT_EQ(load_checkpoint(checkpoint_path(dir.str(), c.step)).step, c.step);
}

TEST(Checkpoint, UnwritableDirectoryIsAnError) {
  TempDir dir;
  // A regular file where a directory should be (root ignores permission bits, so chmod would
  // not make a directory unwritable here).
  const std::string blocker = dir / "not_a_dir";
  std::ofstream(blocker) << "x";
  try {
    save_checkpoint(blocker + "/run", sample_checkpoint(5));
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "cannot create the checkpoint directory");
  }
  EXPECT_THROW(save_checkpoint(blocker, sample_checkpoint(5)), Error);
  EXPECT_TRUE(fs::is_regular_file(blocker));
}

TEST(Checkpoint, RefusesInconsistentContentBeforeWriting) {
  TempDir dir;
  Checkpoint c = sample_checkpoint(7);
  c.adapters[0].name = "has/slash";
  c.optimizer.params[0].name = "has/slash";
  EXPECT_THROW(save_checkpoint(dir.str(), c), Error);
  c = sample_checkpoint(7);
  c.optimizer.params[1].exp_avg.pop_back();
  EXPECT_THROW(save_checkpoint(dir.str(), c), Error);
  c = sample_checkpoint(7);
  c.optimizer.params[2].name = "not.an.adapter";
  EXPECT_THROW(save_checkpoint(dir.str(), c), Error);
  EXPECT_TRUE(list_checkpoints(dir.str()).empty());
}

TEST(Checkpoint, KeepsTheLastK) {
  TempDir dir;
  std::ofstream(dir / "checkpoint-5.h5.tmp") << "left by a crash";
  std::ofstream(dir / "notes.txt") << "not a checkpoint";
  for (int64_t step : {10, 20, 30, 40}) save_checkpoint(dir.str(), sample_checkpoint(step, 8));
  const auto kept = list_checkpoints(dir.str());
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].first, 30);
  EXPECT_EQ(kept[1].first, 40);
  EXPECT_FALSE(fs::exists(dir / "checkpoint-5.h5.tmp"));
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
  EXPECT_EQ(latest_checkpoint(dir.str()), checkpoint_path(dir.str(), 40));

  // The checkpoint just written is never the one pruned, even if an older run left higher steps.
  save_checkpoint(dir.str(), sample_checkpoint(5, 8), {.keep_last = 1, .after_dataset = {}});
  const auto after = list_checkpoints(dir.str());
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].first, 5);
}

TEST(Checkpoint, LatestSortsNumericallyAndIgnoresOthers) {
  TempDir dir;
  EXPECT_EQ(latest_checkpoint(dir.str()), std::nullopt);
  EXPECT_EQ(latest_checkpoint(dir / "missing"), std::nullopt);
  for (int64_t step : {9, 10, 100}) {
    CheckpointSaveOptions keep_all;
    keep_all.keep_last = 10;
    save_checkpoint(dir.str(), sample_checkpoint(step, 8), keep_all);
  }
  std::ofstream(dir / "checkpoint-1000.h5.tmp") << "incomplete";
  std::ofstream(dir / "checkpoint-abc.h5") << "not ours";
  EXPECT_EQ(latest_checkpoint(dir.str()), checkpoint_path(dir.str(), 100));
}

TEST(Checkpoint, TruncatedFileIsAClearError) {
  TempDir dir;
  const std::string path = save_checkpoint(dir.str(), sample_checkpoint(3, 4096));
  const auto size = fs::file_size(path);
  for (uintmax_t keep : {size / 2, uintmax_t{100}, uintmax_t{0}}) {
    const std::string cut = dir / fmt::format("cut-{}.h5", keep);
    fs::copy_file(path, cut);
    fs::resize_file(cut, keep);
    const std::string msg = load_error(cut);
    EXPECT_HAS(msg, cut);
    EXPECT_HAS(msg, "cannot be read as an HDF5 file");
  }
}

TEST(Checkpoint, CorruptedTensorBytesAreDetected) {
  TempDir dir;
  const Checkpoint c = sample_checkpoint(3, 4096);
  const std::string path = save_checkpoint(dir.str(), c);
  // Find the adapter's raw bytes in the file and flip one bit in the middle.
  std::string file;
  {
    std::ifstream in(path, std::ios::binary);
    file.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::vector<uint8_t> tensor = bytes_of(c.adapters[1].tensor);
  const std::string needle(reinterpret_cast<const char*>(tensor.data()) + 1024, 64);
  const size_t at = file.find(needle);
  ASSERT_NE(at, std::string::npos);
  file[at + 10] ^= 0x10;
  const std::string bad = dir / "bad.h5";
  std::ofstream(bad, std::ios::binary) << file;
  const std::string msg = load_error(bad);
  EXPECT_HAS(msg, bad);
  EXPECT_HAS(msg, "dataset /adapters/blk.0.attn_q.weight.lora_b is corrupted");
}

TEST(Checkpoint, NotACheckpointIsAClearError) {
  TempDir dir;
  std::ofstream(dir / "text.h5") << "model:\n  path: x\n";
  EXPECT_HAS(load_error(dir / "text.h5"), "cannot be read as an HDF5 file");
  EXPECT_HAS(load_error(dir / "missing.h5"), "no such file");
  {
    Hdf5Writer w(dir / "other.h5");
    w.write_u8("/something", {1, 2, 3});
    w.close();
  }
  EXPECT_HAS(load_error(dir / "other.h5"), "not a loom checkpoint");
}

// Writes a checkpoint by hand, like save_checkpoint but with `tamper` changing one part.
void write_tampered(const std::string& path,
                    const std::function<void(Hdf5Writer&, const Checkpoint&)>& tamper) {
  const Checkpoint c = sample_checkpoint(4, 8);
  Hdf5Writer w(path);
  w.write_string("/recipe", c.recipe_yaml);
  for (const NamedTensor& t : c.adapters)
    w.write_f32("/adapters/" + t.name, t.tensor.shape(), t.tensor.data_f32());
  for (const AdamWParamState& p : c.optimizer.params) {
    w.write_f32("/optimizer/exp_avg/" + p.name, p.shape, p.exp_avg.data());
    w.write_i64_attribute("/optimizer/exp_avg/" + p.name, "step", p.step);
    w.write_f32("/optimizer/exp_avg_sq/" + p.name, p.shape, p.exp_avg_sq.data());
  }
  tamper(w, c);
  for (const char* attr :
       {"loom_checkpoint_version", "step", "skipped_steps", "tokens_seen", "optimizer_steps"})
    w.write_i64_attribute("/", attr, std::string(attr) == "loom_checkpoint_version" ? 1 : 4);
  w.close();
}

TEST(Checkpoint, MissingDatasetWrongDtypeAndShapeAreNamed) {
  TempDir dir;
  const std::string ok_rng = dir / "missing_position.h5";
  write_tampered(
      ok_rng, [](Hdf5Writer& w, const Checkpoint& c) { w.write_u64("/rng_state", c.rng_state); });
  std::string msg = load_error(ok_rng);
  EXPECT_HAS(msg, ok_rng + ": dataset /data_position is missing");

  const std::string wrong_type = dir / "wrong_type.h5";
  write_tampered(wrong_type, [](Hdf5Writer& w, const Checkpoint& c) {
    const std::vector<float> rng(4, 1.0f);
    w.write_f32("/rng_state", {4}, rng.data());
    w.write_u8("/data_position", c.data_position);
  });
  msg = load_error(wrong_type);
  EXPECT_HAS(msg, wrong_type + ": dataset /rng_state has type f32, expected u64");

  const std::string wrong_shape = dir / "wrong_shape.h5";
  {
    const Checkpoint c = sample_checkpoint(4, 8);
    Hdf5Writer w(wrong_shape);
    w.write_string("/recipe", c.recipe_yaml);
    const NamedTensor& t = c.adapters[0];
    w.write_f32("/adapters/" + t.name, t.tensor.shape(), t.tensor.data_f32());
    const std::vector<float> moment(static_cast<size_t>(t.tensor.numel()), 0.5f);
    w.write_f32("/optimizer/exp_avg/" + t.name, {t.tensor.numel()}, moment.data());
    w.write_i64_attribute("/optimizer/exp_avg/" + t.name, "step", 1);
    w.write_f32("/optimizer/exp_avg_sq/" + t.name, t.tensor.shape(), moment.data());
    w.write_u64("/rng_state", c.rng_state);
    w.write_u8("/data_position", c.data_position);
    for (const char* attr :
         {"loom_checkpoint_version", "step", "skipped_steps", "tokens_seen", "optimizer_steps"})
      w.write_i64_attribute("/", attr, 1);
    w.close();
  }
  msg = load_error(wrong_shape);
  EXPECT_HAS(msg, wrong_shape +
                      ": dataset /optimizer/exp_avg/blk.0.attn_q.weight.lora_a has "
                      "shape [32], expected [4, 8]");
}

TEST(Checkpoint, RestoreAdaptersNamesWhatDiffers) {
  TempDir dir;
  const Checkpoint c = sample_checkpoint(2, 8);
  const std::string path = save_checkpoint(dir.str(), c);
  const Checkpoint r = load_checkpoint(path);
  NamedTensors params;
  for (const NamedTensor& t : c.adapters)
    params.push_back({t.name, Tensor::zeros(t.tensor.shape())});

  NamedTensors wrong_shape = params;
  wrong_shape[0].tensor = Tensor::zeros({8, 8});
  try {
    restore_adapters(r, path, wrong_shape);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), path +
                             ": dataset /adapters/blk.0.attn_q.weight.lora_a has shape [4, 8], "
                             "the model's parameter has [8, 8]");
  }
  NamedTensors extra = params;
  extra.push_back({"blk.9.attn_k.weight.lora_a", Tensor::zeros({4, 8})});
  try {
    restore_adapters(r, path, extra);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "dataset /adapters/blk.9.attn_k.weight.lora_a is missing");
  }
  NamedTensors fewer(params.begin(), params.end() - 1);
  try {
    restore_adapters(r, path, fewer);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(),
               "holds adapter tensor blk.1.ffn_down.weight.dora_m that the model does "
               "not have");
  }
}

// ---- metrics ----------------------------------------------------------------------------------

TEST(Metrics, JsonlLinesAppendAndNonFiniteIsNull) {
  TempDir dir;
  const std::string path = dir / "run/metrics.jsonl";
  {
    MetricsWriter w(path);
    w.write({{"step", 1}, {"loss", 2.5}, {"lr", 1e-4}});
    w.write({{"step", 2}, {"loss", std::numeric_limits<double>::quiet_NaN()}});
  }
  {
    MetricsWriter w(path);  // a resumed run appends
    w.write({{"step", 3}, {"eval", {{"wiki", 1.9}}}});
  }
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["step"], 1);
  EXPECT_DOUBLE_EQ(lines[0]["lr"].get<double>(), 1e-4);
  EXPECT_TRUE(lines[1]["loss"].is_null());
  EXPECT_DOUBLE_EQ(lines[2]["eval"]["wiki"].get<double>(), 1.9);
  { MetricsWriter w(path, /*truncate=*/true); }
  EXPECT_EQ(fs::file_size(path), 0u);
  EXPECT_GT(peak_rss_bytes(), 0);
}

TEST(Metrics, DurationAndProgressFormat) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(723), "12m03s");
  EXPECT_EQ(format_duration(7500), "2h05m");
  EXPECT_EQ(format_duration(-1), "?");
  ProgressSnapshot s{120, 1000, 2.34567, 1.8e-4, 1234.4, 723};
  EXPECT_EQ(format_progress(s), "step 120/1000  loss 2.3457  lr 1.80e-04  1234 tok/s  ETA 12m03s");
}

std::string read_all(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string out;
  for (int c; (c = std::fgetc(f)) != EOF;) out += static_cast<char>(c);
  return out;
}

TEST(Metrics, ProgressLinePlainEveryNStepsWithRateAndEta) {
  std::FILE* out = std::tmpfile();
  double now = 100.0;
  // Resumed at step 10 of 50; each step takes 2 s and trains 1000 tokens.
  ProgressLine progress(50, 10, 5, out, /*is_tty=*/false, [&] { return now; });
  for (int64_t step = 11; step <= 20; ++step) {
    now += 2.0;
    if (step < 20)
      progress.update(step, 3.0 - 0.01 * static_cast<double>(step), 1e-4, 1000);
    else  // with the gradient norm and the memory
      progress.update(step, 3.0 - 0.01 * static_cast<double>(step), 1e-4, 1000, 0.8125, 561.4);
  }
  progress.message("eval wiki: loss 2.1");
  progress.finish();
  const std::string text = read_all(out);
  std::fclose(out);
  // The first step of this process, then every 5th.
  EXPECT_EQ(text,
            "step 11/50  loss 2.8900  lr 1.00e-04  500 tok/s  ETA 1m18s\n"
            "step 15/50  loss 2.8500  lr 1.00e-04  500 tok/s  ETA 1m10s\n"
            "step 20/50  loss 2.8000  lr 1.00e-04  gnorm 0.812  500 tok/s  RSS 561 MB  ETA 1m00s\n"
            "eval wiki: loss 2.1\n");
  EXPECT_EQ(progress.snapshot().step, 20);
}

// Evaluations and checkpoints are left out of tokens/s and the ETA: 3 steps of 2 s with 1000
// tokens each, and 30 s of evaluation before the first and between the steps.
TEST(Metrics, ProgressLineLeavesOtherWorkOutOfRateAndEta) {
  std::FILE* out = std::tmpfile();
  double now = 0.0;
  ProgressLine progress(10, 0, 1, out, /*is_tty=*/false, [&] { return now; });
  now += 30.0;  // the evaluation before step 1
  progress.exclude_time(30.0);
  for (int64_t step = 1; step <= 3; ++step) {
    now += 2.0;
    progress.update(step, 1.0, 1e-4, 1000);
    now += 10.0;  // an evaluation or a checkpoint
    progress.exclude_time(10.0);
  }
  EXPECT_DOUBLE_EQ(progress.snapshot().tokens_per_second, 500.0);
  EXPECT_DOUBLE_EQ(progress.snapshot().eta_seconds, 14.0);  // 7 steps of 2 s
  std::fclose(out);
}

TEST(Metrics, ProgressLineRewritesInPlaceOnATerminal) {
  std::FILE* out = std::tmpfile();
  double now = 0.0;
  ProgressLine progress(3, 0, 100, out, /*is_tty=*/true, [&] { return now; });
  now = 1.0;
  progress.update(1, 2.0, 1e-3, 10);
  now = 2.0;
  progress.message("note");
  progress.update(2, 1.5, 1e-3, 10);
  progress.finish();
  const std::string text = read_all(out);
  std::fclose(out);
  EXPECT_EQ(text.front(), '\r');
  // A bar of 20 cells with the share done: 1 of 3 steps is 6 cells, 33%.
  EXPECT_HAS(text, "\rstep 1/3 [======>.............]  33%  loss 2.0000");
  EXPECT_HAS(text, "note\n");
  EXPECT_HAS(text, "\rstep 2/3 [=============>......]  66%  loss 1.5000");
  EXPECT_EQ(text.back(), '\n');
  // Only the message and finish() end lines.
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2);
}

}  // namespace
}  // namespace loom
