// The training loop end to end (trainer/train_loop.h) on the tiny Hugging Face model
// tests/golden/hf_llama with a small corpus written by the test: the shipped recipes parse, the
// loss falls, a resumed run ends bit-identical to an uninterrupted one, the same recipe twice
// gives bit-identical adapters, the saved adapter reloads with the same logits, non-finite steps
// are skipped and then stop the run. TrainGolden replays scripts/make_train_golden.py (plain
// PyTorch LoRA: logits, loss, adapter gradients, three AdamW steps) through loom.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "autograd/tape.h"
#include "data/token_cache.h"
#include "data/tokenize.h"
#include "layers/llama.h"
#include "layers/safetensors.h"
#include "lora/lora_model.h"
#include "trainer/adapter_file.h"
#include "trainer/checkpoint.h"
#include "trainer/clip.h"
#include "trainer/optimizer.h"
#include "trainer/train_internal.h"
#include "trainer/train_session.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

fs::path source_dir() { return fs::path(LOOM_SOURCE_DIR); }

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("loom_train_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Paragraphs of simple, repetitive English (blank-line separated): easy for a tiny byte-level
// model to get better at in a few steps.
void write_corpus(const fs::path& path, int paragraphs, uint32_t seed) {
  const std::vector<std::string> subjects = {"the cat", "a dog", "the bird", "my friend", "the old man"};
  const std::vector<std::string> verbs = {"sat on", "looked at", "ran to", "jumped over", "slept near"};
  const std::vector<std::string> objects = {"the mat.", "the red door.", "a tall tree.", "the river.", "the house."};
  std::mt19937 rng(seed);
  std::ofstream out(path);
  for (int p = 0; p < paragraphs; ++p) {
    for (int s = 0; s < 3; ++s)
      out << subjects[rng() % subjects.size()] << ' ' << verbs[rng() % verbs.size()] << ' '
          << objects[rng() % objects.size()] << ' ';
    out << "\n\n";
  }
}

std::string tiny_recipe(const fs::path& corpus_a, const fs::path& corpus_b) {
  return "# a test recipe on the tiny model\n"
         "model:\n"
         "  path: " + (source_dir() / "tests/golden/hf_llama").string() + "\n"
         "  base_dtype: keep\n"
         "lora:\n"
         "  rank: 4\n"
         "  alpha: 8.0\n"
         "  dropout: 0.1\n"
         "  targets: all-linear\n"
         "data:\n"
         "  sources:\n"
         "    - name: animals\n"
         "      path: " + corpus_a.string() + "\n"
         "      format: text\n"
         "      heldout_fraction: 0.05\n"
         "    - name: more\n"
         "      path: " + corpus_b.string() + "\n"
         "      format: text\n"
         "      heldout_fraction: 0.05\n"
         "  mix: {animals: 0.7, more: 0.3}\n"
         "  seq_len: 32\n"
         "train:\n"
         "  batch_size: 2\n"
         "  grad_accum: 2\n"
         "  steps: 8\n"
         "  lr: 0.01\n"
         "  warmup_steps: 1\n"
         "eval:\n"
         "  every: 4\n"
         "  batches: 2\n"
         "checkpoint:\n"
         "  every: 4\n"
         "  keep_last: 3\n";
}

struct TinyRun {
  TempDir dir;
  fs::path recipe;
  explicit TinyRun(int paragraphs_a = 200, int paragraphs_b = 100) {
    write_corpus(dir / "a.txt", paragraphs_a, 1);
    write_corpus(dir / "b.txt", paragraphs_b, 2);
    recipe = dir / "tiny.yaml";
    std::ofstream(recipe) << tiny_recipe(dir / "a.txt", dir / "b.txt");
  }
  TrainResult run(const std::string& out, std::vector<std::string> overrides = {},
                  TrainOptions options = {}) const {
    overrides.push_back("output.dir=" + (dir / out).string());
    options.quiet = true;
    return train_recipe_file(recipe.string(), overrides, options);
  }
};

std::vector<AdapterTensor> adapter_of(const std::string& dir) { return read_adapter_tensors(dir); }

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The steps of metrics.jsonl's train records, in file order; every line must be a JSON record.
std::vector<int64_t> train_steps_in(const fs::path& metrics) {
  std::ifstream in(metrics);
  std::vector<int64_t> steps;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      ADD_FAILURE() << metrics << ": not a JSON record: " << line;
      continue;
    }
    if (j["type"] == "train") steps.push_back(j["step"].get<int64_t>());
  }
  return steps;
}

void expect_bit_identical(const std::vector<AdapterTensor>& a, const std::vector<AdapterTensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].name, b[i].name);
    ASSERT_EQ(a[i].values.size(), b[i].values.size());
    EXPECT_EQ(std::memcmp(a[i].values.data(), b[i].values.data(), a[i].values.size() * sizeof(float)), 0)
        << a[i].name << " differs";
  }
}

TEST(TrainRecipes, EveryShippedRecipeParses) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(source_dir() / "recipes")) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    std::ifstream in(e.path());
    std::string first;
    std::getline(in, first);
    EXPECT_EQ(first.rfind("# ", 0), 0u) << e.path() << ": needs a header comment";
    EXPECT_NO_THROW(resolved_recipe_yaml(e.path().string(), {}, false)) << e.path();
    // Overrides apply to shipped recipes too.
    const std::string y = resolved_recipe_yaml(e.path().string(), {"train.steps=30"}, false);
    EXPECT_NE(y.find("steps: 30"), std::string::npos) << y;
  }
  EXPECT_GE(n, 2) << "expected recipes/quickstart_qlora.yaml and recipes/lora_hf.yaml";
}

TEST(TrainLoop, LossFallsAndRunDirectoryIsComplete) {
  TinyRun t;
  const TrainResult r = t.run("run");
  EXPECT_FALSE(r.stopped) << r.stop_reason;
  EXPECT_EQ(r.steps_done, 8);
  ASSERT_EQ(r.eval_before.size(), 2u);
  ASSERT_EQ(r.eval_after.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_GT(r.eval_before[i].tokens, 0);
    EXPECT_LT(r.eval_after[i].loss, r.eval_before[i].loss) << r.eval_after[i].name;
  }
  EXPECT_LT(r.last_loss, r.first_loss);
  const fs::path d = t.dir / "run";
  for (const char* f : {"recipe.yaml", "metrics.jsonl", "summary.json",
                        "adapter/adapter_model.safetensors", "adapter/loom_adapter.json",
                        "checkpoints/checkpoint-8.h5", "checkpoints/checkpoint-4.h5"})
    EXPECT_TRUE(fs::exists(d / f)) << f;
  // metrics: 8 train lines with the mix, 3 evaluations (start, 4, end).
  std::ifstream in(d / "metrics.jsonl");
  int train_lines = 0, eval_lines = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "train") {
      ++train_lines;
      EXPECT_TRUE(j["mix"].contains("animals"));
      EXPECT_GT(j["peak_rss_mb"].get<double>(), 0);
    } else {
      ++eval_lines;
    }
  }
  EXPECT_EQ(train_lines, 8);
  EXPECT_EQ(eval_lines, 3);
  const auto cfg = read_adapter_config(r.adapter_dir);
  EXPECT_EQ(cfg["rank"], 4);
  EXPECT_EQ(cfg["scale_convention"], "alpha/rank");
  EXPECT_DOUBLE_EQ(cfg["scale"].get<double>(), 2.0);
}

TEST(TrainLoop, DeterministicAndResumeIsBitIdentical) {
  TinyRun t;
  const TrainResult a = t.run("a");
  const TrainResult b = t.run("b");
  expect_bit_identical(adapter_of(a.adapter_dir), adapter_of(b.adapter_dir));

  // Interrupt b after its step-4 checkpoint: drop what came later, then resume.
  fs::remove(t.dir / "b/checkpoints/checkpoint-8.h5");
  fs::remove_all(t.dir / "b/adapter");
  // ... and as a full disk would: metrics.jsonl ends inside a record (no newline).
  const fs::path metrics = t.dir / "b/metrics.jsonl";
  const std::string text = read_text(metrics);
  const size_t step6 = text.find("\"step\":6");
  ASSERT_NE(step6, std::string::npos) << text;
  std::ofstream(metrics, std::ios::trunc) << text.substr(0, step6 + 5);
  TrainOptions resume;
  resume.resume_from = (t.dir / "b").string();
  const TrainResult c = t.run("b", {}, resume);
  EXPECT_EQ(c.steps_done, 8);
  expect_bit_identical(adapter_of(a.adapter_dir), adapter_of(c.adapter_dir));
  const Checkpoint ca = load_checkpoint((t.dir / "a/checkpoints/checkpoint-8.h5").string());
  const Checkpoint cc = load_checkpoint((t.dir / "b/checkpoints/checkpoint-8.h5").string());
  EXPECT_TRUE(ca.optimizer == cc.optimizer) << "AdamW state differs after resume";
  EXPECT_EQ(ca.data_position, cc.data_position);
  EXPECT_EQ(ca.tokens_seen, cc.tokens_seen);
  // metrics.jsonl reads as one run: steps 5..8 of the interrupted process are not kept twice,
  // and the cut record is gone (every line parses).
  EXPECT_EQ(train_steps_in(metrics), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

// Ctrl-C in the middle of a run (a real SIGINT through the handler the loop installs, raised
// after step 3): the run stops there, saves the checkpoint and adapter of step 3 (checkpoints
// are every 4 steps otherwise), writes no summary.json, restores the handler it replaced; resumed,
// it ends bit-identical to a run never interrupted.
TEST(TrainLoop, CtrlCStopsAfterTheStepSavesItAndResumesBitIdentical) {
  // As at a terminal: a test run from the background of a non-interactive shell inherits SIGINT
  // ignored, which the run rightly leaves ignored.
  std::signal(SIGINT, SIG_DFL);
  TinyRun t;
  const TrainResult a = t.run("a");
  TrainOptions cut;
  cut.after_step = [](int64_t step) {
    if (step == 3) std::raise(SIGINT);
  };
  const TrainResult b = t.run("b", {}, cut);
  EXPECT_EQ(b.interrupted_by, SIGINT);
  EXPECT_EQ(b.steps_done, 3);
  EXPECT_FALSE(b.stopped);
  EXPECT_TRUE(fs::exists(t.dir / "b/checkpoints/checkpoint-3.h5"));
  EXPECT_FALSE(fs::exists(t.dir / "b/checkpoints/checkpoint-4.h5"));
  EXPECT_FALSE(fs::exists(t.dir / "b/summary.json"));
  EXPECT_EQ(train_steps_in(t.dir / "b/metrics.jsonl"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(load_checkpoint((t.dir / "b/checkpoints/checkpoint-3.h5").string()).step, 3);
  // The adapter of step 3 is saved and loads (export or eval can use it).
  EXPECT_EQ(adapter_of((t.dir / "b/adapter").string()).size(), adapter_of(a.adapter_dir).size());
  struct sigaction now;
  sigaction(SIGINT, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL) << "the run left its SIGINT handler installed";

  TrainOptions resume;
  resume.resume_from = (t.dir / "b").string();
  const TrainResult c = t.run("b", {}, resume);
  EXPECT_EQ(c.interrupted_by, 0);
  EXPECT_EQ(c.steps_done, 8);
  expect_bit_identical(adapter_of(a.adapter_dir), adapter_of(c.adapter_dir));
  EXPECT_TRUE(fs::exists(t.dir / "b/summary.json"));
  EXPECT_EQ(train_steps_in(t.dir / "b/metrics.jsonl"),
            (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

// The first signal only asks the loop to stop; a second one ends the process at once, as if no
// handler were there (for when the step or the save is what the user wants out of).
TEST(Interrupt, SecondSignalEndsTheProcessAtOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::signal(SIGINT, SIG_DFL);  // as at a terminal (see above)
  EXPECT_EXIT(
      {
        const InterruptGuard guard;
        std::raise(SIGINT);
        if (guard.signal() != SIGINT) std::_Exit(3);
        std::raise(SIGINT);
        std::_Exit(4);  // not reached: the second signal ends the process
      },
      testing::KilledBySignal(SIGINT), "interrupted: finishing this step");
  EXPECT_EXIT(
      {
        const InterruptGuard guard;
        std::raise(SIGTERM);
        std::_Exit(guard.signal() == SIGTERM ? 0 : 5);
      },
      testing::ExitedWithCode(0), "");
  // Ignored before (a background job of a shell, nohup): still ignored while the guard is up.
  EXPECT_EXIT(
      {
        std::signal(SIGINT, SIG_IGN);
        const InterruptGuard guard;
        std::raise(SIGINT);
        std::_Exit(guard.signal() == 0 ? 0 : 6);
      },
      testing::ExitedWithCode(0), "");
}

// Gradient accumulation: two micro-batches of 2 rows make the same optimizer step as one batch
// of the same 4 rows (the loss is the mean over every counted target of the step), up to the
// order of the f32 sums. A batch of 2 rows without accumulation is a different step, so the
// comparison can fail.
TEST(TrainLoop, GradientAccumulationEqualsOneLargerBatch) {
  TinyRun t;
  // f32 products: with bf16 ones (Auto on AVX512_BF16 CPUs) a last-bit difference in a sum can
  // flip an activation's rounding to bf16 (2^-8 relative), and AdamW's first steps carry such a
  // difference in a near-zero gradient to a whole learning rate's move.
  const std::vector<std::string> common = {"lora.dropout=0",     "train.steps=3",
                                           "eval.every=0",       "eval.batches=0",
                                           "checkpoint.every=0", "model.precision=f32"};
  const auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), common.begin(), common.end());
    return extra;
  };
  const TrainResult big = t.run("big", with({"train.batch_size=4", "train.grad_accum=1"}));
  const TrainResult acc = t.run("acc", with({"train.batch_size=2", "train.grad_accum=2"}));
  const TrainResult small = t.run("small", with({"train.batch_size=2", "train.grad_accum=1"}));
  EXPECT_NEAR(acc.first_loss, big.first_loss, 1e-5 * std::fabs(big.first_loss));
  EXPECT_NEAR(acc.last_loss, big.last_loss, 1e-4 * std::fabs(big.last_loss));
  const auto max_diff = [](const std::vector<AdapterTensor>& a,
                           const std::vector<AdapterTensor>& b) {
    EXPECT_EQ(a.size(), b.size());
    float d = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i)
      for (size_t k = 0; k < a[i].values.size(); ++k)
        d = std::max(d, std::fabs(a[i].values[k] - b[i].values[k]));
    return d;
  };
  const auto ta = adapter_of(acc.adapter_dir), tb = adapter_of(big.adapter_dir),
             ts = adapter_of(small.adapter_dir);
  const float d_acc = max_diff(ta, tb), d_small = max_diff(ts, tb);
  std::cout << "[ accum ] max |adapter difference| after 3 steps (lr 0.01): 2 x 2 accumulated vs "
               "4 rows: "
            << d_acc << "; 2 rows alone vs 4 rows: " << d_small << "\n";
  EXPECT_LT(d_acc, 1e-4f);
  EXPECT_GT(d_small, 100 * d_acc);
}

// lora.init_from continues an adapter: from a loom run, from its PEFT export and from its
// llama.cpp adapter export, the new run's step-0 evaluation is the first run's final one (same
// held-out documents, same adapter), and training goes on from there. The recipe's own adapter
// structure (here rank 8 against the adapter's 4) is replaced and the run says so.
TEST(TrainLoop, InitFromContinuesAnAdapterOfEveryLayout) {
  TinyRun t;
  const TrainResult a = t.run("a", {"lora.dropout=0", "output.export=[peft, gguf-adapter]"});
  ASSERT_EQ(a.eval_after.size(), 2u);
  for (const std::string from : {"a", "a/export/peft", "a/export/adapter-f32.gguf"}) {
    const std::string out = "from_" + std::to_string(from.size());
    const TrainResult b = t.run(out, {"lora.init_from=" + (t.dir / from).string(), "lora.rank=8",
                                      "lora.dropout=0", "train.steps=4", "checkpoint.every=0"});
    ASSERT_EQ(b.eval_before.size(), 2u) << from;
    for (size_t i = 0; i < 2; ++i)
      EXPECT_NEAR(b.eval_before[i].loss, a.eval_after[i].loss, 1e-6 * a.eval_after[i].loss)
          << from << " " << a.eval_after[i].name;
    EXPECT_TRUE(std::isfinite(b.last_loss)) << from;
    // The continued adapter has the first one's structure and moved on from its values.
    const auto ta = adapter_of(a.adapter_dir), tb = adapter_of(b.adapter_dir);
    ASSERT_EQ(ta.size(), tb.size()) << from;
    float moved = 0;
    for (size_t i = 0; i < ta.size(); ++i) {
      ASSERT_EQ(ta[i].shape, tb[i].shape) << ta[i].name;
      for (size_t k = 0; k < ta[i].values.size(); ++k)
        moved = std::max(moved, std::fabs(ta[i].values[k] - tb[i].values[k]));
    }
    EXPECT_GT(moved, 1e-4f) << from;
    EXPECT_EQ(read_adapter_config(b.adapter_dir)["rank"], 4) << from;
  }
  // An adapter whose q/k rows are in llama.cpp's order (trained on a GGUF) does not fit this
  // Hugging Face-ordered base: refused, not attached with its q/k updates on the wrong rows.
  {
    const fs::path cfg = t.dir / "a/adapter/loom_adapter.json";
    nlohmann::json j = read_adapter_config((t.dir / "a/adapter").string());
    ASSERT_EQ(j["q_k_row_order"], "hf");
    j["q_k_row_order"] = "gguf";
    std::ofstream(cfg) << j.dump(2);
    try {
      t.run("order", {"lora.init_from=" + (t.dir / "a").string()});
      FAIL() << "a GGUF-ordered adapter was attached to a Hugging Face-ordered base";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("q/k rows are in gguf order"), std::string::npos)
          << e.what();
    }
  }
  // Something that is not an adapter is named.
  try {
    t.run("bad", {"lora.init_from=" + t.recipe.string()});
    FAIL() << "a recipe file was accepted as an adapter";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora.init_from"), std::string::npos) << e.what();
  }
}

// data.packing=false: one document per row, padded (padding is never a target). It trains, it
// trains on other rows than the packed run, and resume is bit-identical as with packing.
TEST(TrainLoop, UnpackedRowsTrainAndResumeBitIdentical) {
  TinyRun t;
  const TrainResult packed = t.run("packed", {"eval.every=0"});
  const TrainResult a = t.run("a", {"data.packing=false", "eval.every=0"});
  EXPECT_FALSE(a.stopped) << a.stop_reason;
  EXPECT_LT(a.last_loss, a.first_loss);
  ASSERT_EQ(a.eval_after.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_LT(a.eval_after[i].loss, a.eval_before[i].loss);
  const auto pa = adapter_of(packed.adapter_dir), aa = adapter_of(a.adapter_dir);
  ASSERT_EQ(pa.size(), aa.size());
  EXPECT_NE(pa[0].values, aa[0].values) << "packing=false trained on the packed rows";

  const TrainResult b = t.run("b", {"data.packing=false", "eval.every=0"});
  fs::remove(t.dir / "b/checkpoints/checkpoint-8.h5");
  fs::remove_all(t.dir / "b/adapter");
  // ... and as a full disk can: metrics.jsonl ends with the step-4 record, whole but without
  // its newline (the resumed run's records must not be glued onto it).
  const fs::path metrics = t.dir / "b/metrics.jsonl";
  const std::string text = read_text(metrics);
  const size_t step4 = text.find("\"step\":4");
  ASSERT_NE(step4, std::string::npos) << text;
  std::ofstream(metrics, std::ios::trunc) << text.substr(0, text.find('\n', step4));
  TrainOptions resume;
  resume.resume_from = (t.dir / "b").string();
  const TrainResult c = t.run("b", {"data.packing=false", "eval.every=0"}, resume);
  EXPECT_EQ(c.steps_done, 8);
  expect_bit_identical(aa, adapter_of(c.adapter_dir));
  EXPECT_EQ(train_steps_in(metrics), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

// Resuming with a recipe that changes the training (here data.packing) is refused, naming the
// key and both values, and leaves the run as it was; --allow-recipe-change continues with the new
// value. Keys that only extend or observe the run (train.steps, eval.*) may change.
TEST(TrainLoop, ResumeWithAChangedRecipeIsRefusedNamingTheKey) {
  TinyRun t;
  t.run("run", {"train.steps=4", "eval.every=0", "eval.batches=0"});
  TrainOptions resume;
  resume.resume_from = (t.dir / "run").string();
  try {
    t.run("run", {"train.steps=6", "eval.every=0", "eval.batches=0", "data.packing=false"}, resume);
    FAIL() << "a resume with data.packing changed was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("checkpoint-4.h5"), std::string::npos) << m;
    EXPECT_NE(m.find("data.packing: checkpoint `true`, now `false`"), std::string::npos) << m;
    EXPECT_NE(m.find("--allow-recipe-change"), std::string::npos) << m;
    EXPECT_EQ(m.find("train.steps"), std::string::npos) << "train.steps may change: " << m;
  }
  // Keys whose change would otherwise fail later as a shape or data-position mismatch are named
  // the same way (the comparison comes before anything is restored).
  for (const std::string& change : {std::string("lora.rank=8"), std::string("mix.animals=0.5")}) {
    try {
      t.run("run", {"train.steps=6", "eval.every=0", "eval.batches=0", change}, resume);
      FAIL() << "a resume with " << change << " was accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      const std::string key = change.starts_with("lora") ? "lora.rank: checkpoint `4`, now `8`"
                                                         : "data.sources.animals.weight";
      EXPECT_NE(m.find(key), std::string::npos) << m;
      EXPECT_EQ(m.find("shape"), std::string::npos) << m;
      EXPECT_EQ(m.find("saved position"), std::string::npos) << m;
    }
  }
  EXPECT_FALSE(fs::exists(t.dir / "run/checkpoints/checkpoint-6.h5"));
  const std::string recipe = read_text(t.dir / "run/recipe.yaml");
  EXPECT_NE(recipe.find("packing: true"), std::string::npos) << "the refused resume rewrote the run's recipe";
  // Steps and evaluation may change on resume.
  EXPECT_EQ(t.run("run", {"train.steps=5", "eval.every=0", "eval.batches=1"}, resume).steps_done, 5);
  resume.allow_recipe_change = true;
  EXPECT_EQ(t.run("run", {"train.steps=6", "eval.every=0", "eval.batches=0", "data.packing=false"},
                  resume)
                .steps_done,
            6);
  // Another mix, allowed: the saved data position belongs to the old mix, so the stream starts
  // afresh with the new one (it was a "saved position ... another data configuration" error).
  EXPECT_EQ(t.run("run",
                  {"train.steps=8", "eval.every=0", "eval.batches=0", "data.packing=false",
                   "mix.animals=0.5", "mix.more=0.5"},
                  resume)
                .steps_done,
            8);

  // A checkpoint written before a key existed (its saved recipe lacks the key) resumes when the
  // run leaves the key at its default, and is refused when the run sets another value.
  TinyRun old;
  old.run("run", {"train.steps=4", "eval.every=0", "eval.batches=0"});
  const std::string dir = (old.dir / "run/checkpoints").string();
  Checkpoint ck = load_checkpoint(checkpoint_path(dir, 4));
  const size_t key = ck.recipe_yaml.find("  decay_dora_magnitude: false\n");
  ASSERT_NE(key, std::string::npos) << ck.recipe_yaml;
  ck.recipe_yaml.erase(key, std::string("  decay_dora_magnitude: false\n").size());
  save_checkpoint(dir, ck, {.keep_last = 2, .after_dataset = {}});
  TrainOptions again;
  again.resume_from = (old.dir / "run").string();
  EXPECT_THROW(old.run("run",
                       {"train.steps=6", "eval.every=0", "eval.batches=0",
                        "train.decay_dora_magnitude=true"},
                       again),
               Error);
  EXPECT_EQ(old.run("run", {"train.steps=6", "eval.every=0", "eval.batches=0"}, again).steps_done,
            6);
  // A checkpoint written when chat_template's default was chatml (its recipe lists it for every
  // source) resumes under today's default, model: it renders the same (here: text sources, which
  // render no chat).
  ck = load_checkpoint(checkpoint_path(dir, 6));
  for (size_t at = ck.recipe_yaml.find("chat_template: model"); at != std::string::npos;
       at = ck.recipe_yaml.find("chat_template: model", at))
    ck.recipe_yaml.replace(at, std::string("chat_template: model").size(), "chat_template: chatml");
  ASSERT_NE(ck.recipe_yaml.find("chat_template: chatml"), std::string::npos) << ck.recipe_yaml;
  save_checkpoint(dir, ck, {.keep_last = 2, .after_dataset = {}});
  EXPECT_EQ(old.run("run", {"train.steps=8", "eval.every=0", "eval.batches=0"}, again).steps_done,
            8);
}

// --resume on a finished run changes nothing (no second final evaluation, export or summary);
// a checkpoint past train.steps is refused naming both; a folder whose run stopped before its
// first checkpoint starts over, unless it holds a trained adapter.
TEST(TrainLoop, ResumeOfAFinishedRunChangesNothingAndStepsAreChecked) {
  TinyRun t;
  t.run("run", {"eval.every=0"});
  const std::string summary = read_text(t.dir / "run/summary.json");
  const std::string metrics = read_text(t.dir / "run/metrics.jsonl");
  const auto adapter = adapter_of((t.dir / "run/adapter").string());
  TrainOptions resume;
  resume.resume_from = (t.dir / "run").string();
  const TrainResult again = t.run("run", {"eval.every=0"}, resume);
  EXPECT_TRUE(again.already_finished);
  EXPECT_EQ(again.steps_done, 8);
  EXPECT_EQ(read_text(t.dir / "run/summary.json"), summary);
  EXPECT_EQ(read_text(t.dir / "run/metrics.jsonl"), metrics);
  expect_bit_identical(adapter, adapter_of((t.dir / "run/adapter").string()));

  try {
    t.run("run", {"eval.every=0", "train.steps=6"}, resume);
    FAIL() << "a resume with train.steps below the checkpoint's step was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the checkpoint is at step 8, past train.steps 6"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(read_text(t.dir / "run/summary.json"), summary);
  // Raised: it trains further.
  EXPECT_EQ(t.run("run", {"eval.every=0", "train.steps=10"}, resume).steps_done, 10);

  // Stopped before its first checkpoint (only metrics.jsonl and recipe.yaml there): --resume
  // starts over rather than sending the user back to a fresh start that is refused.
  t.run("early", {"train.steps=2", "checkpoint.every=0", "eval.batches=0"});
  fs::remove_all(t.dir / "early/checkpoints");
  fs::remove_all(t.dir / "early/adapter");
  fs::remove(t.dir / "early/summary.json");
  TrainOptions resume_early;
  resume_early.resume_from = (t.dir / "early").string();
  EXPECT_EQ(t.run("early", {"train.steps=2", "checkpoint.every=0", "eval.batches=0"}, resume_early)
                .steps_done,
            2);
  // ... but a folder holding a trained adapter and no checkpoint is not overwritten.
  fs::remove_all(t.dir / "early/checkpoints");
  try {
    t.run("early", {"train.steps=2", "checkpoint.every=0", "eval.batches=0"}, resume_early);
    FAIL() << "a resume without a checkpoint overwrote a trained run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("but no checkpoint to continue from"), std::string::npos)
        << e.what();
  }
  // A newer checkpoint file that is not the finished run's (here garbage) is not taken for a
  // finished run because of its name: it is read, and refused naming the file.
  t.run("garbage", {"train.steps=2", "eval.batches=0"});
  std::ofstream(t.dir / "garbage/checkpoints/checkpoint-3.h5") << std::string(1000, 'x');
  TrainOptions resume_garbage;
  resume_garbage.resume_from = (t.dir / "garbage").string();
  try {
    t.run("garbage", {"train.steps=3", "eval.batches=0"}, resume_garbage);
    FAIL() << "a garbage checkpoint-3.h5 passed for a run finished at step 3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint-3.h5"), std::string::npos) << e.what();
  }
}

TEST(TrainLoop, FreshRunIntoAnExistingRunIsRefused) {
  TinyRun t;
  t.run("run", {"train.steps=2", "eval.batches=0"});
  try {
    t.run("run", {"train.steps=2", "eval.batches=0"});
    FAIL() << "a second fresh run into the same output.dir was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("resume=true"), std::string::npos) << e.what();
  }
  TrainOptions resume;
  resume.resume = true;
  EXPECT_EQ(t.run("run", {"train.steps=3", "eval.batches=0"}, resume).steps_done, 3);
  // A run that failed before it saved anything (recipe.yaml and metrics.jsonl only) blocks
  // nothing: the same command starts over there.
  fs::create_directories(t.dir / "failed");
  fs::copy_file(t.dir / "run/recipe.yaml", t.dir / "failed/recipe.yaml");
  fs::copy_file(t.dir / "run/metrics.jsonl", t.dir / "failed/metrics.jsonl");
  EXPECT_EQ(t.run("failed", {"train.steps=2", "eval.batches=0"}).steps_done, 2);
  EXPECT_EQ(train_steps_in(t.dir / "failed/metrics.jsonl"), (std::vector<int64_t>{1, 2}));
  // Refused for the sizes that cannot work, before any folder is made: a rank above what a
  // projection can use, a sequence longer than the model's context (256 here).
  for (const auto& [bad, message] : std::vector<std::pair<std::string, std::string>>{
           {"lora.rank=100", "is more than min(in, out) = 64, the most a low-rank update"},
           {"data.seq_len=1000",
            "data.seq_len 1000 is more than the model's context length 256"}}) {
    try {
      t.run("too_big", {bad, "train.steps=2"});
      FAIL() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(t.dir / "too_big")) << bad;
  }
  // output.dir naming a file, or below one: the key is named, not a bare filesystem error.
  std::ofstream(t.dir / "a_file") << "x";
  for (const char* out : {"a_file", "a_file/run"}) {
    try {
      t.run(out, {"train.steps=2", "eval.batches=0"});
      FAIL() << "output.dir " << out << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("output.dir " + (t.dir / out).string(), 0), 0u)
          << e.what();
    }
  }
}

TEST(TrainLoop, SavedAdapterReloadsWithTheSameLogits) {
  TinyRun t;
  const TrainResult r = t.run("run", {"train.steps=4", "eval.batches=0"});
  std::vector<int32_t> ids(2 * 16);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(32 + (i * 7) % 90);
  const std::vector<float> from_file = adapter_logits(r.adapter_dir, ids, 2, 16, Precision::F32);
  // The same tensors taken from the final checkpoint (what training ended with).
  const Checkpoint ck = load_checkpoint(r.last_checkpoint);
  std::vector<AdapterTensor> from_ck;
  for (const NamedTensor& n : ck.adapters) from_ck.push_back({n.name, n.tensor.shape(), n.tensor.to_vector()});
  const std::vector<float> from_checkpoint = adapter_logits(r.adapter_dir, ids, 2, 16, Precision::F32, &from_ck);
  ASSERT_EQ(from_file.size(), from_checkpoint.size());
  EXPECT_EQ(std::memcmp(from_file.data(), from_checkpoint.data(), from_file.size() * 4), 0);
  // And the adapter does something: zero B gives other logits.
  for (AdapterTensor& a : from_ck)
    if (a.name.find("lora_B") != std::string::npos) std::fill(a.values.begin(), a.values.end(), 0.0f);
  const std::vector<float> base = adapter_logits(r.adapter_dir, ids, 2, 16, Precision::F32, &from_ck);
  double diff = 0;
  for (size_t i = 0; i < base.size(); ++i) diff = std::max(diff, std::abs(double(base[i]) - from_file[i]));
  EXPECT_GT(diff, 1e-4);

  // A loom_adapter.json cut short (a full disk, a partial copy) is named as damaged.
  const fs::path cut = t.dir / "cut";
  fs::create_directories(cut);
  const std::string json = read_text(fs::path(r.adapter_dir) / "loom_adapter.json");
  std::ofstream(cut / "loom_adapter.json") << json.substr(0, json.size() / 2);
  try {
    read_adapter_config(cut.string());
    ADD_FAILURE() << "a truncated loom_adapter.json was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("the adapter folder is damaged"), std::string::npos);
  }
}

// The LM head among the targets (with dropout on the adapter input): the loss falls, resume is
// bit-identical, the adapter holds lm_head's A and B and reloads with the logits training ended
// with.
TEST(TrainLoop, LmHeadAdapterTrainsResumesAndReloads) {
  TinyRun t;
  const std::vector<std::string> o = {"lora.targets=[v_proj, lm_head]", "lora.dropout=0.1"};
  const TrainResult a = t.run("a", o);
  EXPECT_FALSE(a.stopped) << a.stop_reason;
  ASSERT_EQ(a.eval_after.size(), 2u);
  EXPECT_LT(a.eval_after[0].loss, a.eval_before[0].loss);
  bool head_a = false;
  double moved = 0;
  for (const AdapterTensor& x : adapter_of(a.adapter_dir)) {
    head_a |= x.name == "base_model.model.lm_head.lora_A.weight";
    if (x.name == "base_model.model.lm_head.lora_B.weight")
      for (float v : x.values) moved = std::max(moved, double(std::fabs(v)));
  }
  EXPECT_TRUE(head_a);
  EXPECT_GT(moved, 0.0);  // B started at zero: the head's adapter was trained

  const TrainResult b = t.run("b", o);
  fs::remove(t.dir / "b/checkpoints/checkpoint-8.h5");
  fs::remove_all(t.dir / "b/adapter");
  TrainOptions resume;
  resume.resume_from = (t.dir / "b").string();
  const TrainResult c = t.run("b", o, resume);
  expect_bit_identical(adapter_of(a.adapter_dir), adapter_of(c.adapter_dir));

  std::vector<int32_t> ids(2 * 16);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(32 + (i * 7) % 90);
  const std::vector<float> from_file = adapter_logits(a.adapter_dir, ids, 2, 16, Precision::F32);
  const Checkpoint ck = load_checkpoint(a.last_checkpoint);
  std::vector<AdapterTensor> from_ck;
  for (const NamedTensor& n : ck.adapters)
    from_ck.push_back({n.name, n.tensor.shape(), n.tensor.to_vector()});
  EXPECT_EQ(adapter_logits(a.adapter_dir, ids, 2, 16, Precision::F32, &from_ck), from_file);
}

TEST(TrainLoop, QloraNf4BaseTrains) {
  TinyRun t;
  const TrainResult r = t.run("nf4", {"model.base_dtype=nf4", "train.steps=4", "eval.every=0"});
  EXPECT_FALSE(r.stopped);
  ASSERT_EQ(r.eval_after.size(), 2u);
  EXPECT_LT(r.eval_after[0].loss, r.eval_before[0].loss);
  EXPECT_EQ(read_adapter_config(r.adapter_dir)["base_dtype"], "nf4");
}

// PEFT's target_modules entries in a recipe: a dotted suffix, a whole module name and a GGUF
// stem adapt exactly the projections they name (the adapter's tensors say which).
TEST(TrainLoop, PeftStyleTargetEntriesAdaptTheModulesTheyName) {
  TinyRun t;
  const TrainResult r =
      t.run("names", {"lora.targets=[self_attn.q_proj, model.layers.1.mlp.up_proj, attn_v]",
                      "train.steps=1", "eval.batches=0"});
  std::vector<std::string> modules;
  for (const AdapterTensor& a : read_adapter_tensors(r.adapter_dir)) {
    const size_t cut = a.name.find(".lora_A");
    if (cut != std::string::npos) modules.push_back(a.name.substr(0, cut));
  }
  std::sort(modules.begin(), modules.end());
  const std::vector<std::string> expected = {
      "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
      "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.q_proj",
      "model.layers.1.self_attn.v_proj"};
  ASSERT_EQ(modules.size(), expected.size()) << ::testing::PrintToString(modules);
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NE(modules[i].find(expected[i]), std::string::npos)
        << modules[i] << " vs " << expected[i];
  // An entry that names no projection of this model is refused when the model is known.
  try {
    t.run("none", {"lora.targets=[model.layers.7.mlp.up_proj]", "train.steps=1"});
    ADD_FAILURE() << "a target naming block 7 of a 2-block model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'model.layers.7.mlp.up_proj' matches no projection; the "
                                         "model's module paths look like "
                                         "'model.layers.0.self_attn.q_proj' (GGUF: "
                                         "'blk.0.attn_q'), blocks 0..1"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(t.dir / "none")) << "a refused run left its folder behind";
}

// train.decay_dora_magnitude: decoupled weight decay on the DoRA magnitudes too (HF Trainer,
// torchtune) or not (loom's default). After one step from the same start, the two runs' magnitudes
// differ by exactly lr * weight_decay * m0, where m0 is the base weight's row norm (DoRA's
// initial magnitude, computed here from the safetensors weights in double); A and B are equal.
TEST(TrainLoop, DoraMagnitudeDecayFollowsTheRecipe) {
  TinyRun t;
  const std::vector<std::string> common = {"lora.use_dora=true",      "lora.dropout=0",
                                           "train.weight_decay=0.5",  "train.lr=0.01",
                                           "train.schedule=constant", "train.warmup_steps=0",
                                           "train.steps=1",           "eval.batches=0"};
  std::vector<std::string> with_decay = common;
  with_decay.push_back("train.decay_dora_magnitude=true");
  const auto kept = adapter_of(t.run("kept", common).adapter_dir);
  const auto decayed = adapter_of(t.run("decayed", with_decay).adapter_dir);
  LlamaModel model = LlamaModel::from_hf((source_dir() / "tests/golden/hf_llama").string());
  ASSERT_EQ(kept.size(), decayed.size());
  int magnitudes = 0;
  for (size_t i = 0; i < kept.size(); ++i) {
    ASSERT_EQ(kept[i].name, decayed[i].name);
    if (kept[i].name.find("lora_magnitude_vector") == std::string::npos) {
      EXPECT_EQ(kept[i].values, decayed[i].values) << kept[i].name;
      continue;
    }
    const Linear* p = nullptr;
    for (const Linear* q : model.projections())
      if (kept[i].name.find(q->hf_name + ".") != std::string::npos) p = q;
    ASSERT_NE(p, nullptr) << kept[i].name;
    const std::vector<float> w = p->weight.to_vector();
    const int64_t rows = p->out_features(), cols = p->in_features();
    ASSERT_EQ(static_cast<int64_t>(kept[i].values.size()), rows);
    for (int64_t r = 0; r < rows; ++r) {
      double norm = 0;
      for (int64_t c = 0; c < cols; ++c) norm += double(w[r * cols + c]) * w[r * cols + c];
      const double expected = 0.01 * 0.5 * std::sqrt(norm);
      const double got = double(kept[i].values[r]) - decayed[i].values[r];
      EXPECT_NEAR(got, expected, 1e-3 * expected + 1e-7) << kept[i].name << " row " << r;
    }
    ++magnitudes;
  }
  EXPECT_EQ(magnitudes, 14);  // all seven projections of both blocks
}

// data.on_exhausted: stop with gradient accumulation: the run ends normally (not as a failure),
// names the source that ran out, trains what it fetched last (a smaller final step), and the
// tokens it trained on (padding not counted) are the tokens the sources delivered.
TEST(TrainLoop, DataEndedUnderStopTrainsTheLastMicroBatchesAndEndsNormally) {
  TinyRun t;
  const TrainResult r =
      t.run("stop", {"data.on_exhausted=stop", "train.grad_accum=3", "train.steps=100000",
                     "eval.batches=0", "checkpoint.every=0", "data.packing=false"});
  EXPECT_FALSE(r.stopped) << r.stop_reason;
  EXPECT_NE(r.data_ended.find("data.on_exhausted: stop"), std::string::npos) << r.data_ended;
  const nlohmann::json summary = nlohmann::json::parse(read_text(r.summary_path));
  int64_t delivered = 0;
  std::vector<std::string> ran_out;
  for (const auto& [name, d] : summary["delivered"].items()) {
    delivered += d["tokens"].get<int64_t>();
    if (d["exhausted"].get<bool>()) {
      ran_out.push_back(name);
      EXPECT_EQ(d["epochs"], 1) << name;
    }
  }
  ASSERT_EQ(ran_out.size(), 1u) << summary.dump();
  EXPECT_NE(r.data_ended.find("'" + ran_out[0] + "' ran out"), std::string::npos) << r.data_ended;
  // Every micro-batch the stream gave was trained: the same run without accumulation (every
  // batch its own step) trains the same tokens. Both are the delivered tokens but for the
  // documents whose EOS fell as a row's last token (a target only, never an input): a few per
  // run, less than one row of 32.
  auto trained_tokens = [](const std::string& metrics) {
    int64_t n = 0;
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j["type"] == "train") n += j["tokens"].get<int64_t>();
    }
    return n;
  };
  const TrainResult one =
      t.run("stop1", {"data.on_exhausted=stop", "train.grad_accum=1", "train.steps=100000",
                      "eval.batches=0", "checkpoint.every=0", "data.packing=false"});
  const int64_t trained = trained_tokens(r.metrics_path);
  EXPECT_EQ(trained, trained_tokens(one.metrics_path));
  EXPECT_GE(delivered - trained, 0);
  EXPECT_LT(delivered - trained, 32) << "delivered " << delivered << ", trained " << trained;
}

// train.epochs: the run ends when the data has been trained on that many times over; the steps
// are counted before the run, so that the learning-rate schedule spans them (each step's lr is
// Hugging Face's cosine with warmup over that total, computed here) and the summary plans them.
// One epoch is the stream data.on_exhausted: stop trains, with the same schedule: bit-identical.
// train.steps caps the epochs. Resumed mid-run, it ends bit-identical; resumed when finished,
// nothing happens, unless train.epochs is raised.
TEST(TrainLoop, EpochsEndTheRunAndTheScheduleSpansThem) {
  TinyRun t(24, 12);
  const std::vector<std::string> base = {"eval.batches=0", "train.steps=0", "checkpoint.every=3",
                                         "train.schedule=cosine", "train.warmup_steps=2"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> o = base;
    o.insert(o.end(), extra.begin(), extra.end());
    return o;
  };
  auto summary_of = [&](const TrainResult& r) {
    return nlohmann::json::parse(read_text(r.summary_path));
  };
  auto exhausted = [](const nlohmann::json& s) {
    std::vector<std::pair<std::string, int64_t>> out;
    for (const auto& [name, d] : s["delivered"].items())
      if (d["exhausted"].get<bool>()) out.emplace_back(name, d["epochs"].get<int64_t>());
    return out;
  };

  const TrainResult e1 = t.run("e1", with({"train.epochs=1"}));
  ASSERT_TRUE(e1.finished);
  const nlohmann::json s1 = summary_of(e1);
  EXPECT_EQ(s1["steps"], e1.steps_done);
  EXPECT_EQ(s1["steps_planned"], e1.steps_done);
  ASSERT_EQ(exhausted(s1).size(), 1u) << s1.dump();
  EXPECT_EQ(exhausted(s1)[0].second, 1);
  EXPECT_NE(e1.data_ended.find("train.epochs 1"), std::string::npos) << e1.data_ended;
  ASSERT_GT(e1.steps_done, 6);

  const TrainResult stop =
      t.run("stop", {"eval.batches=0", "train.steps=100000", "checkpoint.every=3",
                     "train.schedule=cosine", "train.warmup_steps=2", "data.on_exhausted=stop"});
  EXPECT_EQ(stop.steps_done, e1.steps_done);
  EXPECT_EQ(summary_of(stop)["steps_planned"], e1.steps_done);
  expect_bit_identical(adapter_of(e1.adapter_dir), adapter_of(stop.adapter_dir));

  const TrainResult e2 = t.run("e2", with({"train.epochs=2"}));
  const nlohmann::json s2 = summary_of(e2);
  const int64_t total = e2.steps_done;
  EXPECT_EQ(s2["steps_planned"], total);
  EXPECT_EQ(s2["epochs_planned"], 2);
  ASSERT_EQ(exhausted(s2).size(), 1u) << s2.dump();
  EXPECT_EQ(exhausted(s2)[0].second, 2);
  EXPECT_NEAR(static_cast<double>(total), 2.0 * static_cast<double>(e1.steps_done), 1.0);
  std::ifstream in(e2.metrics_path);
  int64_t seen = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] != "train") continue;
    const int64_t k = j["step"].get<int64_t>() - 1;  // steps already taken
    const double expected = k < 2 ? 0.01 * static_cast<double>(k) / 2.0
                                  : 0.01 * 0.5 *
                                        (1.0 + std::cos(M_PI * static_cast<double>(k - 2) /
                                                        static_cast<double>(total - 2)));
    EXPECT_NEAR(j["lr"].get<double>(), expected, 1e-12) << "step " << k + 1;
    ++seen;
  }
  EXPECT_EQ(seen, total);

  const TrainResult capped = t.run("capped", with({"train.epochs=2", "train.steps=5"}));
  EXPECT_EQ(capped.steps_done, 5);
  EXPECT_TRUE(capped.data_ended.empty()) << capped.data_ended;
  EXPECT_EQ(summary_of(capped)["steps_planned"], 5);

  // Cut short after a mid-run checkpoint, resumed: bit-identical.
  const TrainResult again = t.run("again", with({"train.epochs=2"}));
  fs::remove(t.dir / ("again/checkpoints/checkpoint-" + std::to_string(total) + ".h5"));
  fs::remove(again.summary_path);
  fs::remove_all(again.adapter_dir);
  TrainOptions resume;
  resume.resume_from = (t.dir / "again").string();
  const TrainResult resumed = t.run("again", with({"train.epochs=2"}), resume);
  EXPECT_EQ(resumed.steps_done, total);
  expect_bit_identical(adapter_of(e2.adapter_dir), adapter_of(resumed.adapter_dir));
  // Finished: nothing to do; with a third epoch it goes on to the end of that one.
  EXPECT_TRUE(t.run("again", with({"train.epochs=2"}), resume).already_finished);
  const TrainResult third = t.run("again", with({"train.epochs=3"}), resume);
  EXPECT_FALSE(third.already_finished);
  EXPECT_NEAR(static_cast<double>(third.steps_done), 3.0 * static_cast<double>(e1.steps_done), 2.0);
  ASSERT_EQ(exhausted(summary_of(third)).size(), 1u);
  EXPECT_EQ(exhausted(summary_of(third))[0].second, 3);
  // Its steps were counted from the checkpoint's data position (the third pass starts in a
  // fresh row and step), so the plan is what ran and the last step is not trained at lr 0.
  EXPECT_EQ(summary_of(third)["steps_planned"], third.steps_done);
  // Fewer epochs than the pass the checkpoint is in: refused, naming the pass.
  try {
    t.run("again", with({"train.epochs=1"}), resume);
    FAIL() << "a resume with fewer epochs than the checkpoint's pass was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("past train.epochs 1: set train.epochs to 3 or more"),
              std::string::npos)
        << e.what();
  }

  // A warmup longer than the data's steps is refused before training, naming both.
  try {
    t.run("warm", with({"train.epochs=1", "train.warmup_steps=100000"}));
    FAIL() << "a warmup past the data's steps was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.warmup_steps (100000) is more than the"),
              std::string::npos)
        << e.what();
  }
}

// A dry run loads, counts and previews, and leaves nothing: no run folder, no export.
TEST(TrainLoop, DryRunWritesNothing) {
  TinyRun t;
  TrainOptions dry;
  dry.dry_run = true;
  const TrainResult r = t.run("dry", {"output.export=[peft]"}, dry);
  EXPECT_TRUE(r.dry_run);
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.steps_done, 0);
  EXPECT_FALSE(fs::exists(t.dir / "dry"));
  dry.resume = true;
  EXPECT_THROW(t.run("dry", {}, dry), Error);
  // The preview: a row that goes on with the row before's document (plain text: every token
  // trained) shows its first token, the row before's last target, inside the brackets too.
  TrainOptions shown;
  shown.dry_run = true;
  testing::internal::CaptureStdout();
  train_recipe_file(t.recipe.string(), {"output.dir=" + (t.dir / "dry").string()}, shown);
  const std::string out = testing::internal::GetCapturedStdout();
  const size_t row2 = out.find("row 2 of");
  ASSERT_NE(row2, std::string::npos) << out;
  const size_t header = out.find("--- document from", row2);
  ASSERT_NE(header, std::string::npos) << out;
  const size_t text = out.find("---\n", header + 4) + 4;
  EXPECT_EQ(out.compare(text, std::string("⟦").size(), "⟦"), 0) << out.substr(row2, 400);
}

// `loom eval --data`'s scoring (evaluate_documents): one document per row (padded), batches of
// rows, the loss on the completions' tokens and the EOS closing them only. Checked
// against each document run alone through the model, its full logits' log-softmax taken here in
// double at the positions the test works out itself.
TEST(EvalData, CompletionLossEqualsEachDocumentScoredAlone) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> records = {
      {"the cat sat on ", "the mat."},
      {"a dog ran to ", "the red door."},
      {"", "the bird slept near the river."},
      {"Q: where? A: ", "the house."},
      {"my friend looked at ", "a tall tree."}};
  {
    std::ofstream out(dir / "i.jsonl");
    for (const auto& [p, c] : records)
      out << nlohmann::json{{"prompt", p}, {"completion", c}}.dump() << "\n";
  }
  const TrainingModel tm = load_training_model((source_dir() / "tests/golden/hf_llama").string());
  const Tokenizer& tok = *tm.tokenizer;
  TrainSourcePlan sp;
  sp.name = "ev";
  sp.path = (dir / "i.jsonl").string();
  sp.format = "instruct";
  TokenCacheOptions cache;
  cache.enabled = false;
  const auto src =
      load_tokenized_source(source_config(sp, tok), tok, tokenizer_fingerprint(tok), cache);
  ASSERT_EQ(src->num_documents(), static_cast<int64_t>(records.size()));
  PackingConfig pc;  // as loom eval --data packs: one document per row, rows padded
  pc.seq_len = 40;
  pc.batch_size = 2;
  pc.one_document_per_row = true;
  pc.pad_id = tok.pad_id();
  pc.framing = document_framing(tok);
  const SourceEval e = evaluate_documents(*tm.model, src, {0, 1, 2, 3, 4}, pc, Precision::F32, 0);

  double nll = 0;
  int64_t counted = 0;
  NoGradGuard no_grad;
  ForwardOptions fo;
  fo.checkpoint_blocks = false;
  fo.precision = Precision::F32;
  for (const auto& [prompt, completion] : records) {
    std::vector<int32_t> ids;
    if (tok.add_bos() && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
    const std::vector<int32_t> p = tok.encode(prompt, false, false);
    const std::vector<int32_t> c = tok.encode(completion, false, false);
    ids.insert(ids.end(), p.begin(), p.end());
    const size_t first_completion = ids.size();
    ids.insert(ids.end(), c.begin(), c.end());
    ids.push_back(tok.eos_id());
    TokenBatch b;
    const std::vector<int32_t> inputs(ids.begin(), ids.end() - 1);
    b.ids = inputs;
    b.seq_len = static_cast<int64_t>(inputs.size());
    const std::vector<float> logits =
        tm.model->logits(tm.model->forward_hidden(b, fo), Precision::F32).to_vector();
    const int64_t V = tm.model->config().vocab_size;
    // The targets ids[i]: a document's first token is predicted by nothing.
    for (size_t i = std::max<size_t>(first_completion, 1); i < ids.size(); ++i) {
      const float* row = logits.data() + (i - 1) * V;
      double mx = row[0], sum = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      nll += mx + std::log(sum) - row[ids[i]];
      ++counted;
    }
  }
  EXPECT_EQ(e.tokens, counted);
  EXPECT_NEAR(e.loss, nll / static_cast<double>(counted), 1e-5);
  EXPECT_NEAR(e.perplexity, std::exp(nll / static_cast<double>(counted)), 1e-4);
  // A batch limit scores fewer targets.
  EXPECT_LT(evaluate_documents(*tm.model, src, {0, 1, 2, 3, 4}, pc, Precision::F32, 1).tokens,
            counted);
}

TEST(TrainLoop, NonFiniteStepsAreSkippedThenStopTheRun) {
  TinyRun t;
  // lr 1e30: the first update makes the adapters ~1e30, the next forward overflows.
  const TrainResult r = t.run("nan", {"train.lr=1e30", "train.schedule=constant",
                                      "train.warmup_steps=0", "train.max_skipped_steps=2",
                                      "eval.batches=0"});
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.skipped_steps, 2);
  EXPECT_EQ(r.steps_done, 3);
  EXPECT_NE(r.stop_reason.find("stopped at step 3"), std::string::npos) << r.stop_reason;
  EXPECT_NE(r.stop_reason.find("lora_"), std::string::npos) << "names the tensor: " << r.stop_reason;
  // A usable checkpoint and adapter: the values of the last finite step.
  const Checkpoint ck = load_checkpoint(r.last_checkpoint);
  EXPECT_EQ(ck.step, 3);
  EXPECT_EQ(ck.skipped_steps, 2);
  for (const AdapterTensor& a : adapter_of(r.adapter_dir))
    for (float v : a.values) ASSERT_TRUE(std::isfinite(v)) << a.name;

  // Fewer non-finite steps than max_skipped_steps, but every step of the process: nothing was
  // trained, which is not a finished run either. (Step 1 is finite, 2-3 are not; the resumed
  // process runs 4-5, both non-finite.)
  const std::vector<std::string> big = {"train.lr=1e30", "train.schedule=constant",
                                        "train.warmup_steps=0", "train.max_skipped_steps=10",
                                        "eval.batches=0"};
  auto with = [&](std::vector<std::string> v, const char* steps) {
    v.push_back(steps);
    return v;
  };
  EXPECT_FALSE(t.run("all", with(big, "train.steps=3")).stopped);
  TrainOptions resume;
  resume.resume = true;
  const TrainResult r2 = t.run("all", with(big, "train.steps=5"), resume);
  ASSERT_TRUE(r2.stopped);
  EXPECT_NE(r2.stop_reason.find("every step run (2, 4-5) was non-finite and skipped: nothing was "
                                "trained"),
            std::string::npos)
      << r2.stop_reason;
}

// A damaged latest checkpoint (cut short): the error says so and names the older one to resume
// from, which works.
TEST(TrainLoop, DamagedLatestCheckpointPointsAtTheOlderOne) {
  TinyRun t;
  t.run("run", {"eval.batches=0"});
  const fs::path latest = t.dir / "run/checkpoints/checkpoint-8.h5";
  fs::resize_file(latest, fs::file_size(latest) / 2);
  fs::remove_all(t.dir / "run/adapter");
  fs::remove(t.dir / "run/summary.json");  // killed while writing its last checkpoint
  TrainOptions resume;
  resume.resume = true;
  const std::string older = (t.dir / "run/checkpoints/checkpoint-4.h5").string();
  try {
    t.run("run", {"eval.batches=0"}, resume);
    FAIL() << "a truncated checkpoint was resumed from";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(latest.string() + ": cannot be read as an HDF5 file"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("resume from it with --resume " + older),
              std::string::npos)
        << e.what();
  }
  resume.resume_from = older;
  EXPECT_EQ(t.run("run", {"eval.batches=0"}, resume).steps_done, 8);
  // Asked for by name, a damaged checkpoint with only newer ones beside it: no checkpoint to
  // suggest (a newer one is not "older").
  fs::resize_file(older, fs::file_size(older) / 2);
  fs::remove_all(t.dir / "run/adapter");
  try {
    t.run("run", {"eval.batches=0"}, resume);
    FAIL() << "a truncated checkpoint was resumed from";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(older + ": cannot be read"), std::string::npos)
        << e.what();
    EXPECT_EQ(std::string(e.what()).find("An older checkpoint"), std::string::npos) << e.what();
  }
}

TEST(TrainLoop, ResumeWithoutCheckpointSaysSo) {
  TinyRun t;
  TrainOptions o;
  o.resume_from = (t.dir / "missing").string();
  EXPECT_THROW(t.run("missing", {}, o), Error);
}

// ---- golden parity with plain PyTorch LoRA (scripts/make_train_golden.py) --------------------

std::vector<float> golden_tensor(const SafetensorsFile& f, const std::string& name) {
  return f.tensor(name).to_vector();
}

// max |a - b| / max |b|: the error relative to the tensor's scale.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return worst / std::max(scale, 1e-30);
}

TEST(TrainGolden, MatchesPlainPyTorchLoraForwardGradientsAndThreeAdamWSteps) {
  const fs::path json_path = source_dir() / "tests/golden/train_golden.json";
  ASSERT_TRUE(fs::exists(json_path)) << "run scripts/make_train_golden.py";
  const nlohmann::json g = nlohmann::json::parse(std::ifstream(json_path));
  const SafetensorsFile st = SafetensorsFile::open((source_dir() / "tests/golden/train_golden.safetensors").string());

  LlamaModel model = LlamaModel::from_hf((source_dir() / "tests/golden/hf_llama").string());
  LoraConfig cfg;
  cfg.rank = g["rank"];
  cfg.alpha = g["alpha"];
  cfg.targets.modules = g["targets"].get<std::vector<std::string>>();
  LoraModel lora(model, cfg);
  const auto names = g["parameters"].get<std::vector<std::string>>();
  std::vector<LoraParameter> params = lora.parameters();
  ASSERT_EQ(params.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    ASSERT_EQ(params[i].name, names[i]);
    lora.set_parameter(names[i], golden_tensor(st, "init." + names[i]));
  }
  const auto ids = g["ids"].get<std::vector<int32_t>>();
  const auto targets = g["targets_flat"].get<std::vector<int32_t>>();
  TokenBatch tb;
  tb.ids = ids;
  tb.batch = g["batch"];
  tb.seq_len = g["seq_len"];
  ForwardOptions fwd;
  fwd.checkpoint_blocks = true;
  fwd.precision = Precision::F32;

  // f32 everywhere, but another summation order (blocked GEMMs, fused attention, chunked
  // cross-entropy) than PyTorch's: agreement to a few ulps of each tensor's scale, 1e-5.
  constexpr double kTol = 1e-5;
  auto forward_loss = [&](Tensor* hidden_out) {
    const Tensor hidden = model.forward_hidden(tb, fwd);
    if (hidden_out) *hidden_out = hidden;
    return model.loss(hidden, targets, -100, Precision::F32);
  };
  {
    Tensor hidden;
    const CrossEntropyResult ce = forward_loss(&hidden);
    EXPECT_NEAR(ce.loss.item(), g["loss"].get<double>(), 1e-5 * g["loss"].get<double>());
    const std::vector<float> logits = model.logits(hidden.detach(), Precision::F32).to_vector();
    const double e_logits = relative_error(logits, golden_tensor(st, "logits"));
    EXPECT_LT(e_logits, kTol);
    ce.loss.backward();
    double worst_grad = 0;
    for (const LoraParameter& p : params) {
      const double e = relative_error(p.tensor.grad().to_vector(), golden_tensor(st, "grad." + p.name));
      worst_grad = std::max(worst_grad, e);
      EXPECT_LT(e, kTol) << "gradient of " << p.name;
    }
    std::printf("golden: loss %.8f (torch %.8f), logits rel err %.3g, worst gradient rel err %.3g\n",
                ce.loss.item(), g["loss"].get<double>(), e_logits, worst_grad);
    lora.zero_grad();
  }

  // Three training steps. AdamW divides each element's step by its own gradient magnitude,
  // |g| + eps, so where |g| is not far above eps (1e-8) a gradient difference far inside the
  // gradient check reaches the parameter amplified: on the first step the update is
  // -lr g / (|g| + eps), whose change is lr eps dg / (|g| + eps)^2. (Seen: an element with
  // torch's clipped |g| = 4.0e-7 and loom's 2.0e-8 away from it, 2.8e-7 of the gradient's scale,
  // moved that adapter element by 1.2e-6, 1.1e-5 of the tensor's scale.) So each step is held to
  // torch in parts that are each well conditioned:
  //  - the clipped gradients AdamW is given, element by element, within kTol;
  //  - AdamW alone: a copy of the adapters, given torch's clipped gradients, must land on torch's
  //    adapters within kAdamTol (the same f32 operations in the same order; AdamWGolden.*);
  //  - loom's own adapters (its gradients, its AdamW) within kTol element by element wherever
  //    every step's |g| so far was >= kWellConditioned (at most 1e-3 relative amplification),
  //    and within kTol in the 2-norm over the whole tensor, ill-conditioned elements included.
  constexpr double kAdamTol = 1e-6;
  const double eps = g["eps"].get<double>();
  const double kWellConditioned = 1e3 * eps;
  NamedTensors named, twin;
  for (const LoraParameter& p : params) {
    named.push_back({p.name, p.tensor});
    twin.push_back({p.name, Tensor::from_vector(p.tensor.shape(), golden_tensor(st, "init." + p.name))});
  }
  AdamWConfig ac;
  ac.weight_decay = g["weight_decay"];
  ac.eps = eps;
  AdamW opt(named, ac), twin_opt(twin, ac);
  std::vector<std::vector<bool>> conditioned(params.size());  // per element: every |g| so far
  for (size_t i = 0; i < params.size(); ++i) conditioned[i].assign(params[i].tensor.numel(), true);
  for (int s = 0; s < g["steps"].get<int>(); ++s) {
    const std::string step = std::to_string(s + 1);
    lora.zero_grad();
    const CrossEntropyResult ce = forward_loss(nullptr);
    EXPECT_NEAR(ce.loss.item(), g["step_losses"][s].get<double>(), 1e-5 * g["step_losses"][s].get<double>());
    ce.loss.backward();
    const GradNorm norm = clip_grad_norm(named, g["clip_grad_norm"].get<double>());
    EXPECT_NEAR(norm.norm, g["grad_norms"][s].get<double>(), 1e-5 * g["grad_norms"][s].get<double>());
    double worst_grad = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      const std::vector<float> torch_grad = golden_tensor(st, "stepgrad" + step + "." + params[i].name);
      const double e = relative_error(params[i].tensor.grad().to_vector(), torch_grad);
      worst_grad = std::max(worst_grad, e);
      EXPECT_LT(e, kTol) << "clipped gradient of " << params[i].name << " at step " << step;
      for (size_t j = 0; j < torch_grad.size(); ++j)
        if (std::abs(torch_grad[j]) < kWellConditioned) conditioned[i][j] = false;
      twin[i].tensor.impl()->grad = Tensor::from_vector(twin[i].tensor.shape(), torch_grad).impl_ptr();
    }
    opt.step(g["lr"].get<double>());
    twin_opt.step(g["lr"].get<double>());
    double worst_adam = 0, worst = 0, worst_norm2 = 0;
    size_t ill_conditioned = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      const std::vector<float> want = golden_tensor(st, "step" + step + "." + params[i].name);
      const double e_adam = relative_error(twin[i].tensor.to_vector(), want);
      worst_adam = std::max(worst_adam, e_adam);
      EXPECT_LT(e_adam, kAdamTol) << "AdamW given torch's gradients: " << params[i].name << " after step " << step;
      const std::vector<float> got = params[i].tensor.to_vector();
      double scale = 0, diff2 = 0, want2 = 0;
      for (float v : want) scale = std::max(scale, std::abs(double(v)));
      for (size_t j = 0; j < want.size(); ++j) {
        const double d = double(got[j]) - want[j];
        diff2 += d * d;
        want2 += double(want[j]) * want[j];
        if (!conditioned[i][j]) {
          ++ill_conditioned;
          continue;
        }
        worst = std::max(worst, std::abs(d) / scale);
        EXPECT_LT(std::abs(d), kTol * scale)
            << params[i].name << "[" << j << "] after step " << step << ": loom " << got[j] << ", torch " << want[j];
      }
      const double e2 = std::sqrt(diff2 / std::max(want2, 1e-60));
      worst_norm2 = std::max(worst_norm2, e2);
      EXPECT_LT(e2, kTol) << params[i].name << " after step " << step << " (2-norm)";
    }
    std::printf("golden: step %d loss %.8f (torch %.8f), grad norm %.8f (torch %.8f), clipped gradient rel err %.3g, "
                "AdamW alone %.3g, adapters rel err %.3g (%zu elements with |g| < %.0e left to the 2-norm, %.3g)\n",
                s + 1, ce.loss.item(), g["step_losses"][s].get<double>(), norm.norm, g["grad_norms"][s].get<double>(),
                worst_grad, worst_adam, worst, ill_conditioned, kWellConditioned, worst_norm2);
  }
}

}  // namespace
}  // namespace loom
