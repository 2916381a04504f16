// run_training(): the training run step by step (train_loop.h describes it).
#include "trainer/train_session.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "autograd/block_cache.h"
#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "autograd/kernels/cpu.h"
#include "autograd/tape.h"
#include "export/gguf_export.h"
#include "layers/chat_format.h"
#include "trainer/adapter_file.h"
#include "trainer/adapter_load.h"
#include "trainer/checkpoint.h"
#include "trainer/clip.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/recipe.h"
#include "trainer/run_dir.h"
#include "trainer/train_internal.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

// What of the recipe's adapter structure a continued adapter replaces, one line each.
std::vector<std::string> recipe_structure_not_used(const LoraConfig& recipe,
                                                   const LoraConfig& adapter, LlamaModel& model) {
  std::vector<std::string> notes;
  const auto note = [&](const char* key, const std::string& ours, const std::string& theirs) {
    if (ours != theirs)
      notes.push_back(
          fmt::format("{} {} (recipe) not used: the adapter's is {}", key, ours, theirs));
  };
  note("lora.rank", std::to_string(recipe.rank), std::to_string(adapter.rank));
  note("lora.alpha", fmt::format("{:g}", recipe.alpha), fmt::format("{:g}", adapter.alpha));
  note("lora.use_rslora", recipe.rslora ? "true" : "false", adapter.rslora ? "true" : "false");
  note("lora.use_dora", recipe.dora ? "true" : "false", adapter.dora ? "true" : "false");
  note("lora.init", std::string(lora_init_name(recipe.init)),
       std::string(lora_init_name(adapter.init)));
  const auto targeted = [&](const LoraConfig& c) -> std::string {
    try {
      return std::to_string(
          select_targets(model.adaptable(), c.targets, model.config().n_layers).size());
    } catch (const Error&) {
      return "(none: the recipe's targets do not fit this model)";
    }
  };
  note("lora targets (modules adapted)", targeted(recipe), targeted(adapter));
  if (recipe.rank_pattern != adapter.rank_pattern || recipe.alpha_pattern != adapter.alpha_pattern)
    notes.push_back(
        "lora.rank_pattern / lora.alpha_pattern (recipe) not used: the adapter's apply");
  return notes;
}

// "a, b, c" (fmt::join trips GCC 12's -Wstringop-overflow at -O3).
template <class T>
std::string join_items(const std::vector<T>& items) {
  std::string s;
  for (const T& x : items) s += (s.empty() ? "" : ", ") + fmt::format("{}", x);
  return s;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "q4_1: 210 tensors, 106.2M weights; f32: 61 tensors, 0.1M weights" over every weight.
std::string describe_storage(const LlamaModel& model) {
  std::map<std::string, std::pair<int64_t, int64_t>> by_dtype;  // tensors, elements
  std::set<const TensorImpl*> seen;
  auto add = [&](const Tensor& t) {
    if (!t.defined() || !seen.insert(t.impl()).second) return;
    auto& c = by_dtype[std::string(dtype_name(t.dtype()))];
    c.first += 1;
    c.second += t.numel();
  };
  const LlamaWeights& w = model.weights();
  add(w.token_embd);
  add(w.output.weight);
  add(w.output_norm);
  for (const LlamaBlock& b : w.blocks) {
    add(b.attn_norm);
    add(b.ffn_norm);
    for (const Linear* p : b.projections()) add(p->weight);
  }
  std::string out;
  for (const auto& [name, c] : by_dtype)
    out += fmt::format("{}{}: {} tensors, {:.2f}M weights", out.empty() ? "" : "; ", name, c.first,
                       c.second / 1e6);
  return out;
}

std::string precision_text(Precision p) {
  const bool bf16 = resolve_precision(p) == Precision::BF16;
  std::string s = bf16 ? "bf16 matrix products (projections, attention) with f32 accumulation"
                       : "f32 matrix products";
  if (p == Precision::Auto) s += " (auto)";
  if (p == Precision::BF16 && !bf16) s += " (bf16 asked for; this CPU has no AVX512_BF16)";
  return s;
}

std::string base_dtype_text(const std::string& d) {
  if (d == "keep") return "keep (projections stay in the storage they were loaded in)";
  if (d == "nf4") return "nf4 (QLoRA: projections quantized to NF4, blocks of 64, double-quantized absmax)";
  return d + " (projections converted to " + d + ")";
}

std::vector<uint8_t> ints_to_bytes(const std::vector<int64_t>& ints) {
  std::vector<uint8_t> out(ints.size() * 8);
  for (size_t i = 0; i < ints.size(); ++i)
    for (int b = 0; b < 8; ++b) out[i * 8 + b] = static_cast<uint8_t>(static_cast<uint64_t>(ints[i]) >> (8 * b));
  return out;
}

std::vector<int64_t> bytes_to_ints(const std::vector<uint8_t>& bytes, const std::string& path) {
  if (bytes.size() % 8 != 0)
    throw Error(fmt::format("{}: data_position holds {} bytes, expected a multiple of 8", path,
                            bytes.size()));
  std::vector<int64_t> out(bytes.size() / 8);
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t v = 0;
    for (int b = 0; b < 8; ++b) v |= static_cast<uint64_t>(bytes[i * 8 + b]) << (8 * b);
    out[i] = static_cast<int64_t>(v);
  }
  return out;
}

nlohmann::json evals_json(const std::vector<SourceEval>& evals) {
  nlohmann::json j = nlohmann::json::object();
  for (const SourceEval& e : evals)
    j[e.name] = {{"loss", e.loss}, {"perplexity", e.perplexity}, {"tokens", e.tokens}};
  return j;
}

std::string evals_text(const std::vector<SourceEval>& evals) {
  std::string s;
  for (const SourceEval& e : evals)
    s += fmt::format("{}{}: loss {:.4f}, perplexity {:.3f} ({} tokens)", s.empty() ? "" : "; ",
                     e.name, e.loss, e.perplexity, e.tokens);
  return s;
}

// The resolved recipe as dotted key -> value, so a checkpoint's recipe and this run's can be
// compared key by key. A list of named maps (data.sources) is keyed by name
// (data.sources.foldoc.weight, as overrides spell it); any other list is one value in flow style.
void flatten_recipe(const YAML::Node& node, const std::string& prefix,
                    std::map<std::string, std::string>& out) {
  auto key = [&](const std::string& k) { return prefix.empty() ? k : prefix + "." + k; };
  if (node.IsMap()) {
    for (const auto& kv : node) flatten_recipe(kv.second, key(kv.first.as<std::string>()), out);
    return;
  }
  bool named = node.IsSequence() && node.size() > 0;
  std::set<std::string> names;
  for (size_t i = 0; named && i < node.size(); ++i)
    named = node[i].IsMap() && node[i]["name"] && node[i]["name"].IsScalar() &&
            names.insert(node[i]["name"].Scalar()).second;
  if (named) {
    for (size_t i = 0; i < node.size(); ++i)
      flatten_recipe(node[i], key(node[i]["name"].Scalar()), out);
    return;
  }
  if (node.IsScalar()) {
    out[prefix] = node.Scalar();
    return;
  }
  YAML::Emitter e;
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << node;
  out[prefix] = node.IsNull() ? "" : e.c_str();
}

// Keys a resumed run may change: they do not change what the steps compute, or (train.steps)
// extending or shortening a run is what resuming is for.
bool resume_may_change(const std::string& key) {
  for (const char* prefix :
       {"eval.", "checkpoint.", "output.", "resume", "train.steps", "train.epochs",
        "train.max_skipped_steps", "model.checkpoint_activations", "model.keep_attention"})
    if (key.rfind(prefix, 0) == 0) return true;
  return false;
}

struct RecipeChange {
  std::string key, saved, now;
  std::string str() const {
    return fmt::format("{}: checkpoint `{}`, now `{}`", key, saved.empty() ? "(unset)" : saved,
                       now.empty() ? "(unset)" : now);
  }
};

// Keys whose resolved values differ between a checkpoint's recipe and this run's.
std::vector<RecipeChange> recipe_changes(const std::string& saved, const std::string& now,
                                         const std::string& checkpoint_path) {
  // The saved recipe is read through today's schema first, so that a key added since it was
  // written compares as its default ("unset" would refuse every older checkpoint); one that no
  // longer reads (a removed key) is compared as it was written.
  std::string resolved = saved;
  try {
    resolved = recipe_to_yaml(parse_recipe(saved, checkpoint_path));
  } catch (const Error&) {
  }
  std::map<std::string, std::string> a, b;
  try {
    flatten_recipe(YAML::Load(resolved), "", a);
    flatten_recipe(YAML::Load(now), "", b);
  } catch (const YAML::Exception& e) {
    throw Error(fmt::format("{}: the recipe saved in the checkpoint does not parse: {}",
                            checkpoint_path, e.what()));
  }
  std::vector<RecipeChange> out;
  for (const auto& [k, v] : a) {
    const auto it = b.find(k);
    if (it == b.end() || it->second != v) out.push_back({k, v, it == b.end() ? "" : it->second});
  }
  for (const auto& [k, v] : b)
    if (!a.count(k)) out.push_back({k, "", v});
  return out;
}

// A change of a source's chat_template that renders the same: both names resolve to the same
// built-in format for this model (chat_template: model and the model's own format's name), or
// the source renders no chat. Checkpoints written before "model" became the default list
// "chatml" for every source.
bool same_chat_rendering(const RecipeChange& c, const TrainPlan& plan, const Tokenizer& tokenizer) {
  constexpr std::string_view prefix = "data.sources.", suffix = ".chat_template";
  if (!c.key.starts_with(prefix) || !c.key.ends_with(suffix)) return false;
  // Sources are keyed by name (flatten_recipe).
  const std::string name =
      c.key.substr(prefix.size(), c.key.size() - prefix.size() - suffix.size());
  const TrainSourcePlan* source = nullptr;
  for (const TrainSourcePlan& s : plan.sources)
    if (s.name == name) source = &s;
  if (source == nullptr) return false;
  if (!renders_chat(*source)) return true;
  try {
    return resolve_chat_template(c.saved, tokenizer, "saved") ==
           resolve_chat_template(c.now, tokenizer, "now");
  } catch (const Error&) {
    return false;
  }
}

// The console: stdout for the banner and results, the progress line on stderr.
struct Console {
  bool quiet = false;
  template <class... Args>
  void print(fmt::format_string<Args...> f, Args&&... args) const {
    if (quiet) return;
    fmt::print(f, std::forward<Args>(args)...);
    std::fflush(stdout);
  }
};

// The first rows of the first batch a fresh run trains on, as text: each document headed by its
// source, the tokens whose prediction the loss counts inside ⟦ ⟧ (completions and assistant turns
// of instruct / chat data; all of plain text), long rows cut after `max_chars`.
std::string data_preview(const TrainData& data, const Tokenizer& tokenizer, int64_t rows,
                         size_t max_chars) {
  TrainStream stream(data.mix, data.mixer, data.packing);
  Batch b;
  if (!stream.next(b)) return "(the data gives no batch)\n";
  std::string text;
  for (int64_t r = 0; r < std::min(rows, b.batch); ++r) {
    const int64_t T = b.seq_len, at = r * T;
    int64_t counted = 0, real = 0;
    for (int64_t j = 0; j < T; ++j) {
      counted += b.targets[at + j] != -100;
      real += b.source_ids[at + j] >= 0;
    }
    text += fmt::format("row {} of {}: {} tokens ({} padding), the loss counts {}\n", r + 1,
                        b.batch, T, T - real, counted);
    std::string row;
    std::vector<int32_t> run;
    bool run_trained = false;
    auto flush = [&] {
      if (run.empty()) return;
      const std::string piece = tokenizer.decode(run);
      row += run_trained ? fmt::format("⟦{}⟧", piece) : piece;
      run.clear();
    };
    for (int64_t j = 0; j < T && b.source_ids[at + j] >= 0; ++j) {
      if (j == 0 || b.document_ids[at + j] != b.document_ids[at + j - 1]) {
        flush();
        row += fmt::format("{}--- document from '{}' ---\n", j == 0 ? "" : "\n",
                           data.sources[static_cast<size_t>(b.source_ids[at + j])]->name());
      }
      // Token j is the target of input j - 1; a row's first token is the row before's last
      // target (rows share it), counted there when it continues that row's document.
      const bool trained = j > 0 ? b.targets[at + j - 1] != -100 &&
                                       b.document_ids[at + j] == b.document_ids[at + j - 1]
                                 : r > 0 && b.targets[at - 1] != -100;
      if (trained != run_trained) flush();
      run_trained = trained;
      run.push_back(b.tokens[at + j]);
    }
    flush();
    if (row.size() > max_chars) {
      size_t cut = max_chars;
      while (cut > 0 && (static_cast<unsigned char>(row[cut]) & 0xC0) == 0x80) --cut;  // UTF-8
      row = fmt::format("{} ... ({} more bytes)", row.substr(0, cut), row.size() - cut);
    }
    text += row + "\n";
  }
  return text;
}

}  // namespace

// A fresh (not resumed) run into a folder that already holds one would mix two runs' metrics,
// checkpoints and adapters: refuse, saying how to continue or start over.
static void refuse_to_overwrite_a_run(const RunPaths& paths, const TrainOptions& options) {
  // output.dir, or the nearest of its parents that exists, must be a folder: checked before the
  // model and data load.
  std::error_code ec;
  for (fs::path p = fs::path(paths.dir).lexically_normal(); !p.empty(); p = p.parent_path()) {
    if (!fs::exists(p, ec)) {
      if (!p.has_parent_path() || p == p.parent_path()) break;
      continue;
    }
    if (!fs::is_directory(p, ec))
      throw Error(
          fmt::format("output.dir {}: {} is a file, not a folder: train into another "
                      "folder (output.dir=...)",
                      paths.dir, p.string()));
    break;
  }
  if (options.resume) return;
  // What a run leaves that is worth keeping. A folder with only recipe.yaml and metrics.jsonl is
  // a run that failed or was stopped before it saved anything (a full disk at the first
  // checkpoint, a bad token, a kill): nothing to continue, so a fresh run starts over there.
  std::vector<std::string> found;
  for (const std::string& p : {paths.summary, paths.adapter})
    if (fs::exists(p)) found.push_back(fs::path(p).filename().string());
  if (fs::is_directory(paths.checkpoints) && !fs::is_empty(paths.checkpoints)) found.push_back("checkpoints/");
  if (found.empty()) return;
  throw Error(fmt::format("output.dir {} already holds a run ({}): continue it with resume=true "
                          "(or --resume {}), or train into another folder (output.dir=...), or "
                          "remove it first",
                          paths.dir, join_items(found), paths.dir));
}

// On resume, metrics written after the checkpoint (by the interrupted process) are dropped, so
// that metrics.jsonl reads as one run: the resumed steps would otherwise appear twice.
// Also drops lines that are not JSON records: what an interrupted write (a full disk, a kill)
// left, so the resumed file reads as one run.
static void drop_metrics_after(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept, line;
  int64_t dropped = 0;
  // A last record without its newline (cut after the record, before '\n') is kept, but the
  // file is rewritten so that the next record starts on a line of its own.
  bool unterminated = false;
  {
    std::ifstream tail(path, std::ios::binary | std::ios::ate);
    if (tail && tail.tellg() > 0) {
      tail.seekg(-1, std::ios::end);
      unterminated = tail.get() != '\n';
    }
  }
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() ||
        (j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step)) {
      ++dropped;
      continue;
    }
    kept += line + "\n";
  }
  if (dropped > 0 || unterminated) write_file_atomic(path, kept);
}

TrainResult run_training(const TrainPlan& plan, const TrainOptions& options) {
  const double t_start = now_seconds();
  const Console out{options.quiet};
  if (plan.steps < 0 || (plan.steps == 0 && plan.epochs <= 0))
    throw Error(fmt::format("train.steps must be > 0 (or train.epochs set), got {}", plan.steps));
  if (plan.output_dir.empty()) throw Error("output.dir is empty; set it in the recipe or as output.dir=DIR");
  if (!plan.lr_at) throw Error("training plan has no learning-rate schedule (make_train_plan sets it)");
  const RunPaths paths = RunPaths::of(plan.output_dir);
  const int threads = num_threads();
  if (!options.dry_run) refuse_to_overwrite_a_run(paths, options);
  if (options.dry_run && options.resume)
    throw Error("a dry run previews a fresh run: drop --resume / resume=true");

  // ---- resume: which checkpoint, checked before the model loads ------------------------------
  std::optional<std::string> resume_path;
  bool restarting = false;  // resume asked, the folder has no checkpoint: start at step 0
  if (options.resume) {
    // --resume naming a checkpoint file, else the run directory's latest checkpoint.
    if (!options.resume_from.empty() && fs::is_regular_file(options.resume_from)) {
      resume_path = options.resume_from;
    } else if (std::optional<std::string> latest = latest_checkpoint(paths.checkpoints)) {
      resume_path = std::move(latest);
    } else {
      // Nothing to resume (stopped before its first checkpoint): start over, unless the folder
      // holds a trained adapter that starting over would replace.
      for (const std::string& p : {paths.summary, paths.adapter})
        if (fs::exists(p))
          throw Error(fmt::format(
              "resume: {} holds {} but no checkpoint to continue from (looked for "
              "checkpoints/checkpoint-<step>.h5); train into another folder (output.dir=...), or "
              "remove it to start over",
              paths.dir, fs::path(p).filename().string()));
      restarting = fs::exists(paths.metrics);
    }
  }
  if (resume_path) {
    const int64_t at = step_of_filename(fs::path(*resume_path).filename().string());
    if (plan.steps > 0 && at > plan.steps)
      throw Error(fmt::format(
          "{}: the checkpoint is at step {}, past train.steps {}: set train.steps to {} or more to "
          "train further (or leave it as the run had it: loom train --resume {})",
          *resume_path, at, plan.steps, at, paths.dir));
    // Finished: summary.json written at the end of this very checkpoint's step (a checkpoint file
    // that appeared later, or a damaged summary, goes through the checks of a normal resume).
    // A run also finished when its data ended (data.on_exhausted: stop, or the epochs it was
    // given, unless this resume gives it more).
    const nlohmann::json summary = [&] {
      std::ifstream in(paths.summary);
      const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      return j.is_object() ? j : nlohmann::json::object();
    }();
    const bool summary_at = summary.contains("steps") && summary["steps"].is_number_integer() &&
                            summary["steps"].get<int64_t>() == at;
    const bool data_ended_there = summary.contains("data_ended") &&
                                  summary["data_ended"].is_string() &&
                                  !summary["data_ended"].get<std::string>().empty() &&
                                  summary.value("epochs_planned", int64_t{0}) == plan.epochs;
    if (summary_at && (at == plan.steps || data_ended_there)) {
      const std::string further =
          !data_ended_there ? fmt::format(
                                  "To train it further, raise train.steps (loom train "
                                  "--resume {} train.steps=N)",
                                  paths.dir)
          : plan.epochs > 0 ? fmt::format(
                                  "To train it further, raise train.epochs (loom train "
                                  "--resume {} train.epochs=N)",
                                  paths.dir)
                            : std::string("Its data ran out (data.on_exhausted: stop)");
      out.print(
          "loom train: {} finished at step {} ({}{}): nothing to do. {}; to use it: loom "
          "export {} ...\n",
          paths.dir, at, paths.summary,
          data_ended_there ? fmt::format(": {}", summary["data_ended"].get<std::string>()) : "",
          further, paths.dir);
      TrainResult done;
      done.already_finished = true;
      done.steps_done = at;
      done.output_dir = paths.dir;
      done.adapter_dir = paths.adapter;
      done.metrics_path = paths.metrics;
      done.summary_path = paths.summary;
      done.last_checkpoint = *resume_path;
      return done;
    }
  }

  // ---- what the run will do -----------------------------------------------------------------
  TrainingModel tm = load_training_model(plan.model_path);
  LlamaModel& model = *tm.model;
  const ModelConfig& mc = model.config();
  LoraConfig lora_config = lora_config_from_plan(plan);
  std::optional<AdapterToTrain> init_from;
  std::vector<std::string> init_from_notes;
  if (!plan.init_from.empty()) {
    // Continue an adapter: its structure, the run's base dtype, dropout and seed.
    init_from = read_adapter_to_train(plan.init_from, model);
    LoraConfig c = init_from->config;
    c.base_dtype = lora_config.base_dtype;
    c.dropout = lora_config.dropout;
    c.seed = lora_config.seed;
    c.validate();
    init_from_notes = recipe_structure_not_used(lora_config, c, model);
    lora_config = std::move(c);
  }
  if (mc.max_position_embeddings > 0 && plan.seq_len > mc.max_position_embeddings)
    throw Error(fmt::format(
        "data.seq_len {} is more than the model's context length {} ({}): positions beyond "
        "it were never trained (and the step's memory grows with it); lower data.seq_len",
        plan.seq_len, mc.max_position_embeddings, plan.model_path));
  const AdapterCount count = count_adapter_parameters(model, lora_config);
  if (count.head && mc.tie_word_embeddings)
    for (const std::string& f : plan.export_formats)
      if (f.rfind("gguf-adapter", 0) == 0)
        throw Error(
            fmt::format("output.export lists {}, which cannot hold this run's adapter (drop it, "
                        "e.g. output.export=[merged-gguf-q8_0,peft]): {}",
                        f, gguf_tied_head_adapter_reason()));
  if (std::filesystem::is_directory(plan.model_path))
    for (const std::string& f : plan.export_formats) {
      if (f.rfind("merged-gguf", 0) != 0) continue;
      try {
        check_merged_gguf_from_hf(mc, plan.model_path);
      } catch (const Error& e) {
        throw Error(fmt::format(
            "output.export lists {}, which this run's Hugging Face base cannot be written as "
            "(drop it, e.g. output.export=[merged-safetensors,peft]): {}",
            f, e.what()));
      }
      break;
    }
  const int64_t tokens_per_step = plan.batch_size * plan.seq_len * plan.grad_accum;

  out.print("loom train {}\n", plan.recipe_source);
  out.print("  model:       {} ({}, {} layers, hidden {}, {} heads / {} kv heads, vocab {})\n",
            plan.model_path, mc.architecture, mc.n_layers, mc.hidden_size, mc.n_heads,
            mc.n_kv_heads, mc.vocab_size);
  out.print("  tokenizer:   {}\n", tm.tokenizer_description);
  out.print("  storage:     {}\n", describe_storage(model));
  out.print("  base_dtype:  {}\n", base_dtype_text(plan.base_dtype));
  out.print(
      "  compute:     {}; LoRA, norms, softmax, loss and AdamW in f32; activation "
      "checkpointing {}\n",
      precision_text(plan.precision),
      !plan.checkpoint_activations ? "off"
      : plan.keep_attention        ? "on (per block, attention kept)"
                                   : "on (per block)");
  const LoraConfig& lc = lora_config;
  if (init_from)
    out.print("  init_from:   {} ({} adapter): its structure below, trained further\n",
              init_from->path, init_from->kind);
  for (const std::string& note : init_from_notes) out.print("               {}\n", note);
  // The LM head is in no layer: named apart from the block projections.
  std::vector<std::string> block_targets;
  for (const std::string& m : lc.targets.modules)
    if (m != "lm_head" && m != "output") block_targets.push_back(m);
  const std::string layers_text = lc.targets.layers.empty()
                                      ? std::string("every layer")
                                      : fmt::format("layers [{}]", join_items(lc.targets.layers));
  std::string where =
      !lc.targets.regex.empty() ? fmt::format("regex {} in {}", lc.targets.regex, layers_text)
      : block_targets.empty()   ? std::string()
                                : fmt::format("[{}] in {}", join_items(block_targets), layers_text);
  if (count.head) where += where.empty() ? "the LM head" : ", and the LM head";
  out.print("  adapters:    {} r={} alpha={} scale {} = {:.6g}, dropout {}, init {} on {}{}\n",
            lc.dora ? "DoRA" : "LoRA", lc.rank, lc.alpha, lc.rslora ? "alpha/sqrt(r)" : "alpha/r",
            lora_scale(lc.alpha, lc.rank, lc.rslora), lc.dropout,
            init_from ? std::string("from init_from") : std::string(lora_init_name(lc.init)), where,
            lc.rank_pattern.empty() && lc.alpha_pattern.empty()
                ? ""
                : fmt::format(" ({} rank / {} alpha patterns)", lc.rank_pattern.size(),
                              lc.alpha_pattern.size()));
  out.print("               {} modules, {} trainable parameters ({:.3f}% of the model)\n",
            count.modules, count.parameters,
            100.0 * count.parameters /
                static_cast<double>(std::max<int64_t>(1, mc.vocab_size * mc.hidden_size * (mc.tie_word_embeddings ? 1 : 2) +
                                                            mc.n_layers * (mc.hidden_size * (mc.q_dim() + 2 * mc.kv_dim()) +
                                                                           mc.q_dim() * mc.hidden_size +
                                                                           3 * mc.hidden_size * mc.intermediate_size))));
  double weight_sum = 0;
  for (const TrainSourcePlan& s : plan.sources) weight_sum += s.weight;
  for (size_t i = 0; i < plan.sources.size(); ++i) {
    const TrainSourcePlan& s = plan.sources[i];
    out.print("  {}{} ({}, {}): mix {:.3f} of {}, {:.1f}% held out for eval\n",
              i == 0 ? "data:        " : "             ", s.name, s.format, s.path,
              weight_sum > 0 ? s.weight / weight_sum : 0.0, plan.mix_by, 100 * s.heldout_fraction);
    if (s.format == "instruct" && !s.instruct_as_chat)
      out.print(
          "               {}: prompt and completion joined as they are, no chat template "
          "(instruct_as_chat: true renders them as a user / assistant exchange)\n",
          s.name);
    if (renders_chat(s)) {
      const std::string system = resolve_default_system(s, *tm.tokenizer);
      out.print(
          "               {}: rendered as {}; conversations without a system message get {}\n",
          s.name,
          s.chat_template == "model"
              ? source_chat_template(s, *tm.tokenizer) + " (the model's own, chat_template: model)"
              : s.chat_template,
          system.empty() ? std::string("none (default_system: ") + s.default_system + ")"
                         : fmt::format("\"{}\" (default_system: {})", system,
                                       s.default_system == "model" ? "model, the model's own"
                                                                   : "the recipe's"));
    }
  }
  out.print("  batches:     seq_len {}, batch {}, grad accum {} -> {} tokens per step, {}{}\n",
            plan.seq_len, plan.batch_size, plan.grad_accum, tokens_per_step,
            plan.packing ? "documents packed (document mask)" : "one document per row (padded)",
            plan.train_on_prompt ? ", loss on prompts too" : "");
  out.print(
      "  schedule:    {}, AdamW lr {:g} {} (warmup {}, min ratio {:g}), weight decay "
      "{:g}{}, betas ({:g}, {:g}), eps {:g}, clip {}\n",
      plan.epochs > 0
          ? fmt::format(
                "{} epoch{} of the data{}", plan.epochs, plan.epochs == 1 ? "" : "s",
                plan.steps > 0 ? fmt::format(", at most {} steps", plan.steps) : std::string())
      : plan.on_exhausted == "stop" ? fmt::format("{} steps or until the data runs out", plan.steps)
                                    : fmt::format("{} steps", plan.steps),
      plan.lr, plan.schedule, plan.warmup_steps, plan.min_lr_ratio, plan.weight_decay,
      plan.dora && plan.weight_decay > 0
          ? (plan.decay_dora_magnitude ? " (DoRA magnitudes too)" : " (not DoRA magnitudes)")
          : "",
      plan.adam_beta1, plan.adam_beta2, plan.adam_eps,
      plan.clip_grad_norm > 0 ? fmt::format("grad norm {:g}", plan.clip_grad_norm) : "off");
  if (plan.eval_batches > 0)
    out.print("  eval:        {}{}at the end, {} batches per source\n",
              plan.eval_at_start ? "at step 0, " : "",
              plan.eval_every > 0 ? fmt::format("every {} steps, ", plan.eval_every) : "",
              plan.eval_batches);
  else
    out.print("  eval:        none (eval.batches 0)\n");
  out.print("  checkpoints: {}at the end, last {} kept, in {}\n",
            plan.checkpoint_every > 0 ? fmt::format("every {} steps and ", plan.checkpoint_every) : "",
            plan.keep_last, paths.checkpoints);
  out.print("  run:         seed {}, {} threads, stop after {} non-finite steps in a row\n",
            plan.seed, threads, plan.max_skipped_steps);
  out.print("  output:      {}\n", plan.output_dir);

  // ---- the model, the adapters, the data ----------------------------------------------------
  double t0 = now_seconds();
  LoraModel lora(model, lora_config);
  if (init_from) load_adapter_to_train(*init_from, lora, model);
  const BaseConversion& conv = lora.base_conversion();
  out.print("base:          {} projections converted to {}, {:.1f} MB -> {:.1f} MB ({:.1f} s)\n",
            conv.converted, plan.base_dtype, conv.bytes_before / 1e6, conv.bytes_after / 1e6,
            now_seconds() - t0);
  t0 = now_seconds();
  TrainData data = build_train_data(plan, *tm.tokenizer);
  for (const std::string& note : data.cache_notes) out.print("data:          {}\n", note);
  // The steps the run will take: train.steps, or fewer when the data ends first (counted by a
  // pass over the stream, so that the schedule decays over them and the ETA is right).
  int64_t total_steps = plan.steps;
  const bool data_limited = plan.epochs > 0 || plan.on_exhausted == "stop";
  if (data_limited) {
    t0 = now_seconds();
    const int64_t data_steps = count_data_steps(data, plan, plan.steps);
    if (data_steps <= 0)
      throw Error("the training data gives no batch at all: add data, or lower data.seq_len");
    total_steps = data_steps;
    out.print(
        "steps:         {} ({}{}; counted in {:.1f} s)\n", total_steps,
        plan.steps > 0 && total_steps == plan.steps ? "train.steps; the data gives as many or more"
        : plan.epochs > 0 ? fmt::format("what {} epoch{} of the data give{}", plan.epochs,
                                        plan.epochs == 1 ? "" : "s", plan.epochs == 1 ? "s" : "")
                          : std::string("where the data runs out"),
        plan.grad_accum > 1 ? fmt::format(", {} micro-batches each", plan.grad_accum) : "",
        now_seconds() - t0);
    if (plan.warmup_steps > total_steps)
      throw Error(
          fmt::format("train.warmup_steps ({}) is more than the {} step{} the data gives; "
                      "lower train.warmup_steps (train.warmup_steps=N)",
                      plan.warmup_steps, total_steps, total_steps == 1 ? "" : "s"));
  }
  if (options.dry_run) {
    out.print(
        "preview:       the start of the first batch; the loss counts the predictions of "
        "the tokens inside ⟦ ⟧\n{}",
        data_preview(data, *tm.tokenizer, 2, 3000));
    out.print("dry run:       nothing trained, nothing written to {} (token caches aside)\n",
              paths.dir);
    TrainResult r;
    r.dry_run = true;
    r.output_dir = paths.dir;
    return r;
  }

  NamedTensors params;
  std::vector<std::string> no_decay;
  for (const LoraParameter& p : lora.parameters()) {
    params.push_back({p.name, p.tensor});
    if (!plan.decay_dora_magnitude && p.name.find("lora_magnitude_vector") != std::string::npos)
      no_decay.push_back(p.name);
  }
  AdamWConfig adam;
  adam.beta1 = plan.adam_beta1;
  adam.beta2 = plan.adam_beta2;
  adam.eps = plan.adam_eps;
  adam.weight_decay = plan.weight_decay;
  AdamW optimizer(params, adam, no_decay);

  // ---- resume ---------------------------------------------------------------------------------
  int64_t step = 0, skipped_total = 0, consecutive_skipped = 0, tokens_seen = 0;
  double wall_before = 0;
  std::vector<SourceEval> eval_before;
  if (restarting)
    out.print(
        "resume:        no checkpoint in {} (the run there stopped before its first); "
        "starting at step 0\n",
        paths.checkpoints);
  if (resume_path) {
    const Checkpoint ck = [&] {
      try {
        return load_checkpoint(*resume_path);
      } catch (const Error& e) {
        // A checkpoint that cannot be loaded (unreadable, a dataset failing its CRC, missing or
        // of the wrong type or shape): point at the newest one before it.
        const std::string why = e.what();
        const int64_t damaged = step_of_filename(fs::path(*resume_path).filename().string());
        std::string older;
        if (damaged >= 0)
          for (const auto& [s, p] : list_checkpoints(paths.checkpoints))
            if (s < damaged) older = p;
        if (older.empty()) throw;
        throw Error(fmt::format("{}\nAn older checkpoint is there: resume from it with --resume {}",
                                why, older));
      }
    }();
    out.print("resume:        {} (step {} of {}, {} tokens seen)\n", *resume_path, ck.step,
              total_steps, ck.tokens_seen);
    // A run resumed with other data, adapters, model or optimizer settings is not the run
    // the checkpoint belongs to (and would not be bit-identical to it): refused, naming the keys,
    // unless the caller allows it.
    // Checked before anything is restored, so that a changed key is named rather than failing
    // as a shape or data-position mismatch.
    std::string refused;
    size_t n_refused = 0;
    bool data_changed = false;
    for (const RecipeChange& c : recipe_changes(ck.recipe_yaml, plan.recipe_yaml, *resume_path)) {
      if (c.key == "resume") continue;  // resuming is what this run does: nothing to note
      if (same_chat_rendering(c, plan, *tm.tokenizer)) continue;
      if (c.key.starts_with("data.")) data_changed = true;
      if (resume_may_change(c.key) || options.allow_recipe_change) {
        out.print("note:          {} (changed on resume)\n", c.str());
      } else {
        refused += "\n  " + c.str();
        ++n_refused;
      }
    }
    if (n_refused > 0)
      throw Error(fmt::format(
          "{}: this run's recipe differs from the one the checkpoint was trained with in {} "
          "key(s) that change the training:{}\nResume with the run's own recipe (`loom train "
          "--resume {}`), set these keys back, or pass --allow-recipe-change to continue with the "
          "new values (the result is then not the run the checkpoint belongs to).",
          *resume_path, n_refused, refused, paths.dir));
    if (plan.steps > 0 && ck.step > plan.steps)
      throw Error(
          fmt::format("{}: the checkpoint is at step {}, past train.steps {}: set "
                      "train.steps to {} or more to train further",
                      *resume_path, ck.step, plan.steps, ck.step));
    restore_adapters(ck, *resume_path, params);
    optimizer.load_state(ck.optimizer);
    if (data_changed)  // allowed above: the saved position belongs to the old data settings
      out.print(
          "note:          the data settings changed, so the checkpoint's data position does "
          "not apply: the data stream starts from its beginning with the new settings\n");
    std::optional<TrainStreamPosition> position;
    if (!data_changed) {
      position = TrainStreamPosition::from_ints(bytes_to_ints(ck.data_position, *resume_path));
      // Fewer epochs than the pass the checkpoint is in cannot be honoured (the pass would be
      // trained to its end regardless): refused, as train.steps below the checkpoint's step is.
      const Mixer& mixer = data.stream->mixer();
      for (int s = 0; s < mixer.num_sources() && plan.epochs > 0; ++s) {
        const size_t i = static_cast<size_t>(s);
        if (i >= position->before_piece.sources.size()) break;  // seek() below names the mismatch
        const int64_t pass = position->before_piece.sources[i].epoch + 1;
        if (mixer.normalized_weight(s) > 0 && pass > plan.epochs)
          throw Error(fmt::format(
              "{}: the checkpoint is in pass {} over source '{}', past train.epochs {}: set "
              "train.epochs to {} or more to train further",
              *resume_path, pass, mixer.source(s).data->name(), plan.epochs, pass));
      }
      data.stream->restore(*position);
    }
    if (ck.rng_state.size() != 2 || ck.rng_state[0] != plan.seed)
      throw Error(fmt::format("{}: rng_state is for seed {}, this run's train.seed is {}; resume "
                              "with the recipe the checkpoint was made with",
                              *resume_path, ck.rng_state.empty() ? 0 : ck.rng_state[0], plan.seed));
    step = ck.step;
    // The steps left, counted from where the stream now stands (the checkpoint's position, or
    // the start of changed data): a finished run given more epochs starts its next pass in a
    // fresh row and step, which a count from the start would not see.
    if (data_limited) {
      const int64_t left =
          plan.steps > 0 && step >= plan.steps
              ? 0
              : count_data_steps(data, plan, plan.steps > 0 ? plan.steps - step : 0,
                                 position ? &*position : nullptr);
      if (step + left != total_steps)
        out.print("steps:         {} (from the checkpoint's data position: {} left)\n", step + left,
                  left);
      total_steps = step + left;
    }
    skipped_total = ck.skipped_steps;
    tokens_seen = ck.tokens_seen;
    auto scalar = [&](const std::string& k, double fallback) {
      const auto it = ck.scalars.find(k);
      return it == ck.scalars.end() ? fallback : it->second;
    };
    consecutive_skipped = static_cast<int64_t>(scalar("consecutive_skipped", 0));
    wall_before = scalar("wall_seconds", 0);
    for (const auto& s : plan.sources) {
      if (ck.scalars.count("eval_before." + s.name + ".loss"))
        eval_before.push_back({s.name, static_cast<int64_t>(scalar("eval_before." + s.name + ".tokens", 0)),
                               scalar("eval_before." + s.name + ".loss", 0),
                               std::exp(scalar("eval_before." + s.name + ".loss", 0))});
    }
    const int saved_threads = static_cast<int>(scalar("threads", threads));
    if (saved_threads != threads)
      out.print(
          "warning:       the checkpoint was made with {} threads, this run has {}: the "
          "result will not be bit-identical to an uninterrupted run\n",
          saved_threads, threads);
  }

  std::error_code dir_error;
  fs::create_directories(paths.dir, dir_error);
  if (dir_error)
    throw Error(
        fmt::format("output.dir {}: cannot create the folder: {}", paths.dir, dir_error.message()));
  write_file_atomic(paths.recipe, plan.recipe_yaml);
  if (resume_path) drop_metrics_after(paths.metrics, step);
  MetricsWriter metrics(paths.metrics, /*truncate=*/!resume_path.has_value());

  TrainResult result;
  result.output_dir = paths.dir;
  result.adapter_dir = paths.adapter;
  result.metrics_path = paths.metrics;
  result.summary_path = paths.summary;
  result.eval_before = eval_before;

  std::optional<ProgressLine> progress;
  if (!options.quiet) progress.emplace(total_steps, step, std::max<int64_t>(1, plan.log_every));
  auto message = [&](const std::string& line) {
    if (progress) progress->message(line);
  };

  auto run_eval = [&](int64_t at_step) -> std::vector<SourceEval> {
    if (plan.eval_batches <= 0) return {};  // eval.batches 0: no evaluation
    const double te = now_seconds();
    std::vector<SourceEval> evals = evaluate_sources(model, lora, data, plan);
    nlohmann::json rec = {{"type", "eval"}, {"step", at_step}, {"sources", evals_json(evals)},
                          {"seconds", now_seconds() - te}};
    if (progress) progress->exclude_time(now_seconds() - te);  // tokens/s and ETA: training only
    metrics.write(rec);
    message(fmt::format("eval @ step {}: {}", at_step, evals_text(evals)));
    return evals;
  };

  if (step == 0 && plan.eval_at_start) {
    result.eval_before = run_eval(0);
    eval_before = result.eval_before;
  }

  auto save = [&](int64_t at_step) {
    // The save holds the optimizer state's copy and the file's bytes in memory for a moment
    // (trainer/hdf5_file.h); the cached activation blocks are handed back first, so that the
    // save does not raise the run's peak (the next step maps them again: ~30 ms).
    const double t_save = now_seconds();
    trim_block_cache();
    Checkpoint ck;
    ck.step = at_step;
    ck.skipped_steps = skipped_total;
    ck.tokens_seen = tokens_seen;
    ck.adapters = params;
    ck.optimizer = optimizer.state();
    ck.rng_state = {plan.seed, static_cast<uint64_t>(at_step)};
    ck.data_position = ints_to_bytes(data.stream->position().to_ints());
    ck.scalars["consecutive_skipped"] = static_cast<double>(consecutive_skipped);
    ck.scalars["threads"] = threads;
    ck.scalars["wall_seconds"] = wall_before + (now_seconds() - t_start);
    for (const SourceEval& e : eval_before) {
      ck.scalars["eval_before." + e.name + ".loss"] = e.loss;
      ck.scalars["eval_before." + e.name + ".tokens"] = static_cast<double>(e.tokens);
    }
    ck.recipe_yaml = plan.recipe_yaml;
    CheckpointSaveOptions so;
    so.keep_last = plan.keep_last;
    result.last_checkpoint = save_checkpoint(paths.checkpoints, ck, so);
    if (progress) progress->exclude_time(now_seconds() - t_save);
    return result.last_checkpoint;
  };

  // ---- the loop -------------------------------------------------------------------------------
  ForwardOptions fwd;
  fwd.checkpoint_blocks = plan.checkpoint_activations;
  fwd.keep_attention = plan.keep_attention;
  fwd.precision = plan.precision;
  fwd.attention_precision = plan.precision;  // bf16 attention products in the training step
  double train_seconds = 0;
  const int64_t first_step = step;  // > 0 when resumed
  const int64_t skipped_before = skipped_total;
  int64_t tokens_this_run = 0, last_checkpoint_step = -1, last_eval_step = step == 0 && plan.eval_at_start ? 0 : -1;
  bool first = true;
  std::vector<Batch> micro(static_cast<size_t>(plan.grad_accum));
  std::string data_ended;  // set when data.on_exhausted: stop ended the data
  const InterruptGuard interrupt;  // Ctrl-C / SIGTERM: stop between steps, save, say how to go on
  // Bounded by train.steps; a run the data ends (total_steps counted it) stops when it does.
  const int64_t step_limit = plan.steps > 0 ? plan.steps : std::numeric_limits<int64_t>::max();
  while (step < step_limit && interrupt.signal() == 0) {
    const double ts = now_seconds();
    bool ended = false;
    size_t fetched = 0;  // micro-batches of this step (fewer only when the data ends)
    int64_t targets = 0, tokens = 0;
    for (Batch& b : micro) {
      if (!data.stream->next(b)) {
        ended = true;
        break;
      }
      ++fetched;
      targets += b.counted_targets();
      tokens += b.real_tokens();  // padding is not counted
    }
    if (ended) {
      // data.on_exhausted: stop. What was fetched is still trained on, as one last (smaller)
      // step; the run then ends normally.
      std::string ran_out;
      for (const SourceDelivery& d : data.stream->delivered())
        if (d.exhausted) ran_out += fmt::format("{}'{}'", ran_out.empty() ? "" : ", ", d.name);
      data_ended = fmt::format("the data ended at step {} ({}): {} ran out of training documents{}",
                               step + (fetched > 0 ? 1 : 0),
                               plan.epochs > 0 ? fmt::format("train.epochs {}", plan.epochs)
                                               : std::string("data.on_exhausted: stop"),
                               ran_out.empty() ? std::string("a source") : ran_out,
                               plan.epochs > 1 ? fmt::format(" ({} passes)", plan.epochs) : "");
      if (fetched == 0) break;
    }
    lora.zero_grad();
    double loss_sum = 0;
    for (size_t m = 0; m < fetched; ++m) {
      const Batch& b = micro[m];
      lora.set_dropout_step(static_cast<uint64_t>(step) * static_cast<uint64_t>(plan.grad_accum) + m);
      const Tensor hidden = model.forward_hidden(token_batch(b), fwd);
      const CrossEntropyResult ce = model.loss(hidden, b.targets, -100, plan.precision);
      loss_sum += ce.loss_sum;
      if (ce.n_tokens == 0) continue;
      // The step's loss is the mean over every counted target of its micro-batches.
      scale(ce.loss, static_cast<float>(static_cast<double>(ce.n_tokens) / static_cast<double>(targets)))
          .backward();
    }
    const double loss = targets > 0 ? loss_sum / static_cast<double>(targets) : std::nan("");
    const double lr = plan.lr_at(step, total_steps);
    const GradNorm norm = clip_grad_norm(params, plan.clip_grad_norm);
    const bool skip = !std::isfinite(loss) || !norm.finite();
    if (skip) {
      ++skipped_total;
      ++consecutive_skipped;
      const std::string what =
          norm.nonfinite ? norm.nonfinite->describe()
                         : fmt::format("loss is {} with finite gradients", loss);
      message(fmt::format("step {}: skipped, non-finite ({}; loss {}) [{} in a row]", step + 1, what,
                          loss, consecutive_skipped));
      if (consecutive_skipped >= std::max<int64_t>(1, plan.max_skipped_steps)) {
        result.stopped = true;
        result.stop_reason = fmt::format(
            "stopped at step {}: {} non-finite steps in a row (train.max_skipped_steps {}); the "
            "last: {}, loss {}. The adapters are those of the last finite step; lower train.lr or "
            "check the data",
            step + 1, consecutive_skipped, plan.max_skipped_steps, what, loss);
      }
    } else {
      consecutive_skipped = 0;
      optimizer.step(lr);
    }
    lora.zero_grad();
    ++step;
    tokens_seen += tokens;
    tokens_this_run += tokens;
    const double dt = now_seconds() - ts;
    train_seconds += dt;
    if (first) result.first_loss = loss;
    first = false;
    result.last_loss = loss;

    // The delivered share of each source, in the unit the mix counts (data.mix_by).
    nlohmann::json mix = nlohmann::json::object();
    for (const SourceDelivery& d : data.stream->delivered())
      mix[d.name] = plan.mix_by == "examples" ? d.example_fraction : d.token_fraction;
    metrics.write({{"type", "train"},
                   {"step", step},
                   {"loss", loss},
                   {"lr", lr},
                   {"grad_norm", norm.norm},
                   {"skipped", skip},
                   {"tokens", tokens},
                   {"targets", targets},
                   {"tokens_per_second", tokens / dt},
                   {"step_seconds", dt},
                   {"peak_rss_mb", peak_rss_bytes() / 1048576.0},
                   {"mix", mix}});
    if (progress) progress->update(step, loss, lr, tokens, norm.norm, rss_bytes() / 1048576.0);
    if (options.after_step) options.after_step(step);
    if (result.stopped || !data_ended.empty() || interrupt.signal() != 0) break;

    if (plan.eval_every > 0 && step % plan.eval_every == 0 && step < total_steps) {
      run_eval(step);
      last_eval_step = step;
    }
    if (plan.checkpoint_every > 0 && step % plan.checkpoint_every == 0 && step < total_steps) {
      save(step);
      last_checkpoint_step = step;
    }
  }
  if (progress) progress->finish();
  if (!result.stopped && step > first_step && skipped_total - skipped_before == step - first_step) {
    // Fewer steps than train.max_skipped_steps, all of them non-finite: nothing was trained.
    result.stopped = true;
    result.stop_reason = fmt::format(
        "every step run ({}, {}-{}) was non-finite and skipped: nothing was trained. Check the "
        "model and adapter weights (a NaN or Inf in them) and the data, or lower train.lr",
        step - first_step, first_step + 1, step);
  }

  // ---- interrupted: the checkpoint and adapter of this step, then out -------------------------
  if (interrupt.signal() != 0) {
    if (last_checkpoint_step != step) save(step);
    save_adapter(paths.adapter, lora, model, plan.model_path, step);
    // summary.json stands for a finished run (a sweep skips a run that has one): one left by an
    // earlier finish of this folder no longer tells the truth.
    std::error_code ec;
    fs::remove(paths.summary, ec);
    result.interrupted_by = interrupt.signal();
    result.steps_done = step;
    result.skipped_steps = skipped_total;
    result.tokens_per_second = train_seconds > 0 ? tokens_this_run / train_seconds : 0;
    result.peak_rss_bytes = peak_rss_bytes();
    result.wall_seconds = wall_before + (now_seconds() - t_start);
    out.print("interrupted:   by {} after step {} of {}; no final evaluation\n",
              interrupt_signal_name(result.interrupted_by), step, total_steps);
    out.print("saved:         checkpoint {}\n               adapter    {}/ (of step {})\n",
              result.last_checkpoint, paths.adapter, step);
    out.print("continue with: loom train --resume {}\n", paths.dir);
    return result;
  }

  // ---- the end ----------------------------------------------------------------------------
  if (options.at_final_evaluation) options.at_final_evaluation();
  if (last_eval_step != step && !data.sources.empty()) result.eval_after = run_eval(step);
  if (last_checkpoint_step != step) save(step);
  save_adapter(paths.adapter, lora, model, plan.model_path, step);

  result.steps_done = step;
  result.skipped_steps = skipped_total;
  result.data_ended = data_ended;
  result.tokens_per_second = train_seconds > 0 ? tokens_this_run / train_seconds : 0;
  result.peak_rss_bytes = peak_rss_bytes();
  result.wall_seconds = wall_before + (now_seconds() - t_start);

  nlohmann::json per_source = nlohmann::json::object();
  for (const SourceEval& e : result.eval_before) per_source[e.name]["before"] = {{"loss", e.loss}, {"perplexity", e.perplexity}, {"tokens", e.tokens}};
  for (const SourceEval& e : result.eval_after) per_source[e.name]["after"] = {{"loss", e.loss}, {"perplexity", e.perplexity}, {"tokens", e.tokens}};
  // Training tokens each source actually delivered over the whole run (resumes included).
  nlohmann::json delivered = nlohmann::json::object();
  for (const SourceDelivery& d : data.stream->delivered())
    delivered[d.name] = {{"tokens", d.tokens},
                         {"examples", d.examples},
                         {"token_fraction", d.token_fraction},
                         {"example_fraction", d.example_fraction},
                         {"epochs", d.epoch},
                         {"exhausted", d.exhausted}};
  nlohmann::json summary = {
      {"recipe", plan.recipe_source},
      {"model", plan.model_path},
      {"base_dtype", plan.base_dtype},
      {"steps", step},
      {"steps_planned", total_steps},
      {"epochs_planned", plan.epochs},
      {"skipped_steps", skipped_total},
      {"stopped", result.stopped},
      {"stop_reason", result.stop_reason},
      {"data_ended", result.data_ended},
      {"first_loss_this_process", result.first_loss},
      {"final_loss", result.last_loss},
      {"eval", per_source},
      {"tokens_seen", tokens_seen},
      {"delivered", delivered},
      {"tokens_per_second", result.tokens_per_second},
      {"peak_rss_mb", result.peak_rss_bytes / 1048576.0},
      {"wall_seconds", result.wall_seconds},
      {"threads", threads},
      {"trainable_parameters", lora.trainable_parameter_count()},
      {"adapter", paths.adapter},
      {"last_checkpoint", result.last_checkpoint},
  };
  write_file_atomic(paths.summary, summary.dump(2) + "\n");
  result.finished = true;

  for (const SourceEval& e : result.eval_after) {
    const SourceEval* b = nullptr;
    for (const SourceEval& x : result.eval_before)
      if (x.name == e.name) b = &x;
    if (b != nullptr) {
      out.print("eval {}: perplexity {:.3f} -> {:.3f} (loss {:.4f} -> {:.4f})\n", e.name,
                b->perplexity, e.perplexity, b->loss, e.loss);
    } else {  // eval.at_start: false, or a resumed run
      out.print("eval {}: perplexity {:.3f} (loss {:.4f}; not evaluated at the start)\n", e.name,
                e.perplexity, e.loss);
    }
  }
  if (result.stopped) out.print("STOPPED: {}\n", result.stop_reason);
  if (!result.data_ended.empty()) out.print("data:          {}\n", result.data_ended);
  out.print(
      "done: {} steps ({} skipped), loss {:.4f} -> {:.4f}{}, {:.0f} tokens/s, peak RSS {:.0f} "
      "MB, {}\n",
      step, skipped_total, result.first_loss, result.last_loss,
      first_step == step ? std::string(" (no steps left to run in this process)")
      : first_step > 0   ? fmt::format(" (steps {}-{}, run in this process)", first_step + 1, step)
                         : std::string(),
      result.tokens_per_second, result.peak_rss_bytes / 1048576.0,
      format_duration(result.wall_seconds));
  out.print("outputs:       adapter {}/ (adapter_model.safetensors, loom_adapter.json)\n"
            "               metrics {}\n               summary {}\n               checkpoint {}\n"
            "               recipe  {}\n",
            paths.adapter, paths.metrics, paths.summary, result.last_checkpoint, paths.recipe);
  if (interrupt.signal() != 0) {
    // Came during the final evaluation or save, which went on: the run is finished, but what
    // the caller would do next (exports, the sweep's next run) is not wanted now.
    result.interrupted_by = interrupt.signal();
    out.print("interrupted:   by {} after the last step; the run itself is finished\n",
              interrupt_signal_name(result.interrupted_by));
  }
  return result;
}

}  // namespace loom
