// Exporting a trained run (trainer/export_run.h) and attaching adapters of every layout
// (trainer/adapter_load.h), on the tiny Hugging Face llama tests/golden/hf_llama: a recipe with
// output.export trains and exports; the merged f32 folder evaluates to the unmerged adapter's
// perplexity (merge math against the LoRA forward, two separate code paths); the run, its PEFT
// folder and its llama.cpp adapter GGUF, each attached again, give the logits training ended with.
// The formats themselves are checked against peft / transformers / gguf / llama.cpp in
// tests/interop/test_export_*.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "autograd/tape.h"
#include "tests/test_helpers.h"
#include "trainer/adapter_load.h"
#include "trainer/export_run.h"
#include "trainer/train_session.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using test::source_dir;
using test::TempDir;


void write_corpus(const fs::path& path, int paragraphs, uint32_t seed) {
  const std::vector<std::string> words = {"the cat", "a dog", "sat on", "ran to", "the mat.", "a tree."};
  std::mt19937 rng(seed);
  std::ofstream out(path);
  for (int p = 0; p < paragraphs; ++p) {
    for (int s = 0; s < 6; ++s) out << words[rng() % words.size()] << ' ';
    out << "\n\n";
  }
}

std::string recipe_text(const fs::path& dir) {
  return "model:\n"
         "  path: " + (source_dir() / "tests/golden/hf_llama").string() + "\n"
         "  precision: f32\n"
         "lora:\n  rank: 4\n  alpha: 8.0\n  dropout: 0.0\n  targets: all-linear\n"
         "data:\n  sources:\n"
         "    - name: animals\n      path: " + (dir / "a.txt").string() + "\n"
         "      format: text\n      heldout_fraction: 0.1\n"
         "  seq_len: 32\n"
         "train:\n  batch_size: 2\n  steps: 6\n  lr: 0.02\n  warmup_steps: 1\n"
         "eval:\n  every: 0\n  batches: 1\n"
         "checkpoint:\n  every: 0\n"
         "output:\n  dir: " + (dir / "run").string() + "\n"
         "  export: [peft, gguf-adapter, merged-safetensors-f32]\n";
}

std::vector<float> logits_of(const AdaptedModel& am, const std::vector<int32_t>& ids) {
  NoGradGuard no_grad;
  TokenBatch tb;
  tb.ids = ids;
  tb.batch = 1;
  tb.seq_len = static_cast<int64_t>(ids.size());
  ForwardOptions fwd;
  fwd.checkpoint_blocks = false;
  fwd.precision = Precision::F32;
  const Tensor hidden = am.base.model->forward_hidden(tb, fwd);
  return am.base.model->logits(hidden, Precision::F32).to_vector();
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(a[i])));
  }
  return worst / std::max(scale, 1e-30);
}

struct ExportedRun {
  TempDir t;
  fs::path run;
  ExportedRun() {
    write_corpus(t.path() / "a.txt", 300, 3);
    std::ofstream(t.path() / "r.yaml") << recipe_text(t.path());
    TrainOptions o;
    o.quiet = true;
    const TrainResult r = train_recipe_file((t.path() / "r.yaml").string(), {}, o);
    EXPECT_FALSE(r.stopped) << r.stop_reason;
    run = t.path() / "run";
  }
};

TEST(ExportRun, RecipeExportsEveryFormatAndMergedMatchesAdapter) {
  ExportedRun e;
  const fs::path x = e.run / "export";
  for (const char* f : {"peft/adapter_config.json", "peft/adapter_model.safetensors",
                        "adapter-f32.gguf", "merged-safetensors-f32/model.safetensors",
                        "merged-safetensors-f32/config.json", "quantization_cost.md",
                        "quantization_cost.json"})
    EXPECT_TRUE(fs::exists(x / f)) << f;
  const auto cost = nlohmann::json::parse(std::ifstream(x / "quantization_cost.json"));
  double adapter = 0, merged = 0;
  for (const auto& row : cost) {
    if (row["model"] == "adapter (unmerged)") adapter = row["perplexity"];
    if (row["model"] == "merged-safetensors-f32") merged = row["perplexity"];
  }
  ASSERT_GT(adapter, 1.0);
  // f32 merge and f32 products: W + s B A summed once instead of applied per token; rounding only.
  EXPECT_NEAR(merged / adapter, 1.0, 1e-5) << "adapter " << adapter << " merged " << merged;
}

// The run names its base by an absolute path (usable from any working directory); the PEFT
// export names it by output.base_model_name when the recipe gives one (a Hugging Face id).
TEST(ExportRun, BaseModelNamesInTheAdapterFiles) {
  TempDir t;
  write_corpus(t.path() / "a.txt", 300, 3);
  std::ofstream(t.path() / "r.yaml") << recipe_text(t.path());
  TrainOptions o;
  o.quiet = true;
  const fs::path cwd = fs::current_path();
  fs::current_path(t.path());  // the recipe's model path relative to the working directory
  const std::string rel = fs::relative(source_dir() / "tests/golden/hf_llama").string();
  train_recipe_file(
      "r.yaml", {"model.path=" + rel, "output.export=[peft]", "output.base_model_name=org/tiny"},
      o);
  fs::current_path(cwd);
  const auto loom =
      nlohmann::json::parse(std::ifstream(t.path() / "run/adapter/loom_adapter.json"));
  EXPECT_EQ(loom["base_model"],
            (source_dir() / "tests/golden/hf_llama").lexically_normal().string());
  const auto peft =
      nlohmann::json::parse(std::ifstream(t.path() / "run/export/peft/adapter_config.json"));
  EXPECT_EQ(peft["base_model_name_or_path"], "org/tiny");
  // From another working directory the run still finds its base.
  EXPECT_NO_THROW(load_adapted_model((t.path() / "run").string(), ""));
}

TEST(ExportRun, EveryAdapterLayoutAttachesToTheSameLogits) {
  ExportedRun e;
  std::vector<int32_t> ids(24);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(40 + (i * 11) % 80);
  const AdaptedModel run = load_adapted_model(e.run.string(), "");
  EXPECT_EQ(run.kind, "loom");
  EXPECT_EQ(run.run_dir, e.run.string());
  const std::vector<float> want = logits_of(run, ids);

  const AdaptedModel peft = load_adapted_model((e.run / "export/peft").string(), "");
  EXPECT_EQ(peft.kind, "peft");
  EXPECT_LT(max_rel_diff(want, logits_of(peft, ids)), 1e-6);

  const std::string base = (source_dir() / "tests/golden/hf_llama").string();
  const AdaptedModel gguf = load_adapted_model((e.run / "export/adapter-f32.gguf").string(), base);
  EXPECT_EQ(gguf.kind, "gguf");
  EXPECT_LT(max_rel_diff(want, logits_of(gguf, ids)), 1e-6);

  // The adapter changes the model: the bare base differs.
  TrainingModel bare = load_training_model(base);
  AdaptedModel plain;
  plain.base = std::move(bare);
  EXPECT_GT(max_rel_diff(want, logits_of(plain, ids)), 1e-4);
}

TEST(ExportRun, BadInputsAreRefusedClearly) {
  ExportedRun e;
  TempDir other;
  try {
    load_adapted_model(other.path().string(), "");
    FAIL() << "an empty folder was accepted as an adapter";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("not an adapter loom can read"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("; found an empty folder"), std::string::npos)
        << err.what();
  }
  {
    // A loom adapter folder that lost its loom_adapter.json: the error says what is there.
    const fs::path half = other.path() / "half";
    fs::create_directories(half);
    fs::copy_file(e.run / "adapter/adapter_model.safetensors", half / "adapter_model.safetensors");
    try {
      load_adapted_model(half.string(), "");
      FAIL() << "a folder with only adapter_model.safetensors was accepted";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find("; found a folder holding adapter_model.safetensors"),
                std::string::npos)
          << err.what();
    }
  }
  try {
    load_adapted_model((e.run / "export/adapter-f32.gguf").string(), "");
    FAIL() << "a GGUF adapter without a base was accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("--base"), std::string::npos) << err.what();
  }
  {
    // The base named in loom_adapter.json is not found from here: the message says how to name
    // one. An adapter with tensors for a block the base does not have: named as such.
    const fs::path copy = other.path() / "adapter_copy";
    fs::copy(e.run / "adapter", copy);
    nlohmann::json j;
    std::ifstream(copy / "loom_adapter.json") >> j;
    j["base_model"] = "relative/base/folder";
    std::ofstream(copy / "loom_adapter.json") << j.dump();
    try {
      load_adapted_model(copy.string(), "");
      FAIL() << "a missing base was accepted";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what())
                    .find("base model 'relative/base/folder' (base_model in "
                          "loom_adapter.json"),
                std::string::npos)
          << err.what();
      EXPECT_NE(std::string(err.what()).find("--model"), std::string::npos) << err.what();
    }
    const fs::path tensors = copy / "adapter_model.safetensors";
    std::string bytes;
    {
      std::ifstream in(tensors, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    for (size_t at = bytes.find("layers.1."); at != std::string::npos; at = bytes.find("layers.1."))
      bytes[at + 7] = '7';  // same length: the header's offsets stay valid
    std::ofstream(tensors, std::ios::binary | std::ios::trunc) << bytes;
    const std::string base = (source_dir() / "tests/golden/hf_llama").string();
    try {
      load_adapted_model(copy.string(), base);
      FAIL() << "an adapter with tensors for block 7 was attached to a 2-block base";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what())
                    .find("the adapter has tensors for block 7, but the base "
                          "model " +
                          base + " has 2 blocks (0..1)"),
                std::string::npos)
          << err.what();
    }
  }
  AdaptedModel am = load_adapted_model(e.run.string(), "");
  ExportRequest req;
  req.formats = {"peft"};
  req.out_dir = (e.run / "export").string();
  req.evaluate = false;
  try {
    export_adapter(am, req, [](const std::string&) {});
    FAIL() << "an existing export was overwritten without force";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("--force"), std::string::npos) << err.what();
  }
  req.formats = {"merged-gguf-q5_k"};
  EXPECT_THROW(export_adapter(am, req, [](const std::string&) {}), Error);
  // Refused before anything is written: a format twice. And a folder the export created is
  // not left behind empty when its only export fails.
  req.out_dir = (other.path() / "fresh").string();
  req.formats = {"peft", "peft"};
  try {
    export_adapter(am, req, [](const std::string&) {});
    FAIL() << "a format given twice was accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("export format 'peft' is given twice"),
              std::string::npos)
        << err.what();
  }
  EXPECT_FALSE(fs::exists(req.out_dir));
  req.formats = {"merged-gguf-q8_0"};  // a GGUF from this Hugging Face base is refused
  EXPECT_THROW(export_adapter(am, req, [](const std::string&) {}), Error);
  EXPECT_FALSE(fs::exists(req.out_dir)) << "the failed export left its empty folder";
  // A text for the cost that cannot serve is refused before any export is written.
  req.formats = {"peft"};
  std::ofstream(other.path() / "empty.txt").flush();
  req.eval_text = (other.path() / "empty.txt").string();
  req.evaluate = true;
  try {
    export_adapter(am, req, [](const std::string&) {});
    FAIL() << "an empty --eval-text was accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("--eval-text " + req.eval_text + ": 0 tokens"),
              std::string::npos)
        << err.what();
  }
  EXPECT_FALSE(fs::exists(req.out_dir)) << "the export was written before --eval-text was read";
  req.eval_text.clear();
  req.evaluate = false;
  req.formats = {"merged-gguf-q8_0"};
  req.out_dir = (other.path() / "a/b/c").string();  // and the folders above it that it made
  EXPECT_THROW(export_adapter(am, req, [](const std::string&) {}), Error);
  EXPECT_FALSE(fs::exists(other.path() / "a")) << "the failed export left a/b/ behind";
  EXPECT_TRUE(fs::exists(other.path())) << "the failed export removed a folder it did not make";
}

// Ctrl-C during an export (here raised as the second format starts): the command stops, the
// first format stays complete, nothing half-written is left, and the message says which formats
// are complete and which were not written.
TEST(ExportRun, CtrlCStopsTheExportLeavingOnlyCompleteFiles) {
  ExportedRun e;
  std::signal(SIGINT, SIG_DFL);  // as at a terminal (ctest's background jobs start it ignored)
  AdaptedModel am = load_adapted_model(e.run.string(), "");
  TempDir other;
  ExportRequest req;
  req.formats = {"gguf-adapter", "merged-safetensors-f32", "peft"};
  req.out_dir = (other.path() / "x").string();
  int started = 0;
  try {
    export_adapter(am, req, [&](const std::string& line) {
      if (line.rfind("export ", 0) == 0 && ++started == 2) std::raise(SIGINT);
    });
    FAIL() << "the export went on after Ctrl-C";
  } catch (const Interrupted& err) {
    EXPECT_EQ(err.signal(), SIGINT);
    const std::string m = err.what();
    EXPECT_NE(m.find("interrupted by SIGINT (Ctrl-C): the export stopped, nothing half-written "
                     "is left in " +
                     req.out_dir),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("complete: gguf-adapter; not written: merged-safetensors-f32, peft"),
              std::string::npos)
        << m;
  }
  std::vector<std::string> left;
  for (const fs::directory_entry& d : fs::directory_iterator(req.out_dir))
    left.push_back(d.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"adapter-f32.gguf"});
  for (const fs::directory_entry& d : fs::directory_iterator(other.path()))
    EXPECT_EQ(d.path().filename(), "x") << "left next to the export folder";
  EXPECT_EQ(std::signal(SIGINT, SIG_DFL), SIG_DFL) << "the guard did not restore the handler";
  // The complete file is the whole adapter: it attaches and gives the run's logits.
  std::vector<int32_t> ids(16);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(30 + (i * 7) % 90);
  const AdaptedModel gguf =
      load_adapted_model((fs::path(req.out_dir) / "adapter-f32.gguf").string(),
                         (source_dir() / "tests/golden/hf_llama").string());
  EXPECT_LT(max_rel_diff(logits_of(am, ids), logits_of(gguf, ids)), 1e-6);
  // Run again, the export completes (the finished file is replaced with --force).
  req.force = true;
  const ExportSummary s = export_adapter(am, req, [](const std::string&) {});
  EXPECT_EQ(s.items.size(), 3u);
  EXPECT_TRUE(fs::exists(fs::path(req.out_dir) / "quantization_cost.json"));
}

// Ctrl-C after the last step (during the final evaluation, which goes on): the run finishes
// (summary.json), the exports it would make next are skipped, and the result says both.
TEST(ExportRun, CtrlCDuringTheFinalEvaluationFinishesTheRunAndSkipsTheExports) {
  TempDir t;
  write_corpus(t.path() / "a.txt", 300, 3);
  std::ofstream(t.path() / "r.yaml") << recipe_text(t.path());
  std::signal(SIGINT, SIG_DFL);  // as at a terminal (ctest's background jobs start it ignored)
  TrainOptions o;
  o.quiet = true;
  o.at_final_evaluation = [] { std::raise(SIGINT); };
  const TrainResult r = train_recipe_file((t.path() / "r.yaml").string(), {}, o);
  EXPECT_EQ(r.interrupted_by, SIGINT);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.steps_done, 6);
  EXPECT_FALSE(r.eval_after.empty()) << "the final evaluation did not run to its end";
  EXPECT_TRUE(fs::exists(t.path() / "run/summary.json"));
  EXPECT_TRUE(fs::exists(t.path() / "run/adapter/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(t.path() / "run/export")) << "the exports ran after Ctrl-C";
  EXPECT_EQ(std::signal(SIGINT, SIG_DFL), SIG_DFL) << "the guard did not restore the handler";
}

// A merged GGUF a Hugging Face base cannot be written as (this folder has no tokenizer.json) is
// refused before training starts, naming the format and why; nothing is written.
TEST(ExportRun, MergedGgufOfAnHfBaseWithoutTokenizerIsRefusedBeforeTraining) {
  TempDir t;
  write_corpus(t.path() / "a.txt", 300, 3);
  std::string recipe = recipe_text(t.path());
  const std::string formats = "[peft, gguf-adapter, merged-safetensors-f32]";
  recipe.replace(recipe.find(formats), formats.size(), "[peft, merged-gguf-q8_0]");
  std::ofstream(t.path() / "r.yaml") << recipe;
  TrainOptions o;
  o.quiet = true;
  try {
    train_recipe_file((t.path() / "r.yaml").string(), {}, o);
    FAIL() << "trained a run whose export cannot be written";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("output.export lists merged-gguf-q8_0"), std::string::npos) << what;
    EXPECT_NE(what.find("has no tokenizer.json"), std::string::npos) << what;
  }
  EXPECT_FALSE(fs::exists(t.path() / "run"));
}

}  // namespace
}  // namespace loom
