// Exports of a trained adapter and their quantization cost (see export_run.h).
#include "trainer/export_run.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "data/file_io.h"
#include "export/gguf_adapter_read.h"
#include "export/gguf_export.h"
#include "export/hf_export.h"
#include "export/peft_export.h"
#include "layers/inference.h"
#include "trainer/recipe.h"
#include "trainer/recipe_fields.h"
#include "trainer/run_dir.h"
#include "trainer/train_loop.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

struct FormatSpec {
  std::string kind;    // "peft", "gguf-adapter", "merged-safetensors", "merged-gguf"
  std::string type;    // "f32", "bf16", "q8_0", ...
  std::string output;  // file or folder name under out_dir
};

FormatSpec parse_format(const std::string& f) {
  auto suffix = [&](const std::string& prefix, const std::string& fallback) {
    return f.size() > prefix.size() ? f.substr(prefix.size() + 1) : fallback;
  };
  if (f == "peft") return {"peft", "f32", "peft"};
  if (f.rfind("gguf-adapter", 0) == 0) {
    const std::string t = suffix("gguf-adapter", "f32");
    return {"gguf-adapter", t, "adapter-" + t + ".gguf"};
  }
  if (f.rfind("merged-safetensors", 0) == 0) {
    const std::string t = suffix("merged-safetensors", "bf16");
    return {"merged-safetensors", t, "merged-safetensors-" + t};
  }
  if (f.rfind("merged-gguf-", 0) == 0) {
    const std::string t = suffix("merged-gguf", "f16");
    return {"merged-gguf", t, "merged-" + t + ".gguf"};
  }
  throw Error(fmt::format("export format '{}' is not known", f));
}

uint64_t size_of(const std::string& path) {
  if (fs::is_regular_file(path)) return fs::file_size(path);
  uint64_t total = 0;
  if (fs::is_directory(path))
    for (const auto& e : fs::recursive_directory_iterator(path))
      if (e.is_regular_file()) total += e.file_size();
  return total;
}

struct HeldoutTokens {
  std::string source;
  std::vector<int32_t> tokens;
  int64_t ctx = 512;
};

// The run's held-out documents per source (EOS between documents), at most max_tokens each.
std::vector<HeldoutTokens> heldout_streams(const AdaptedModel& am, int64_t max_tokens) {
  const Recipe recipe = load_recipe(RunPaths::of(am.run_dir).recipe);
  const TrainPlan plan = make_train_plan(recipe);
  const TrainData data = build_train_data(plan, *am.base.tokenizer);
  const int32_t eos = am.base.tokenizer->eos_id();
  std::vector<HeldoutTokens> out;
  for (size_t i = 0; i < data.sources.size(); ++i) {
    HeldoutTokens s;
    s.source = plan.sources[i].name;
    s.ctx = plan.seq_len;
    for (int64_t doc : data.heldout[i]) {
      for (int32_t t : data.sources[i]->document_tokens(doc)) s.tokens.push_back(t);
      if (eos >= 0) s.tokens.push_back(eos);
      if (static_cast<int64_t>(s.tokens.size()) >= max_tokens) break;
    }
    if (static_cast<int64_t>(s.tokens.size()) > max_tokens) s.tokens.resize(static_cast<size_t>(max_tokens));
    if (!s.tokens.empty()) out.push_back(std::move(s));
  }
  return out;
}

std::vector<HeldoutTokens> text_stream(const AdaptedModel& am, const std::string& path, int64_t max_tokens) {
  HeldoutTokens s;
  s.source = fs::path(path).filename().string();
  if (!fs::is_regular_file(path))
    throw Error(fmt::format(
        "--eval-text {}: not a file (the text the export's cost is measured on)", path));
  try {
    s.tokens = am.base.tokenizer->encode(read_file_bytes(path));
  } catch (const Error& e) {
    throw Error(fmt::format("--eval-text {}: {}", path, e.what()));
  }
  if (s.tokens.size() < 2)
    throw Error(
        fmt::format("--eval-text {}: {} token{}; measuring the cost needs a text of at "
                    "least a few hundred words",
                    path, s.tokens.size(), s.tokens.size() == 1 ? "" : "s"));
  if (static_cast<int64_t>(s.tokens.size()) > max_tokens) s.tokens.resize(static_cast<size_t>(max_tokens));
  s.ctx = 512;
  return {s};
}

CostRow evaluate(const LlamaModel& model, const HeldoutTokens& s, const std::string& name,
                 Precision precision) {
  PerplexityOptions o;
  o.ctx = std::min<int64_t>(s.ctx, static_cast<int64_t>(s.tokens.size()));
  o.scoring = PerplexityScoring::All;
  o.precision = precision;
  o.batch = std::max<int64_t>(1, 2048 / std::max<int64_t>(o.ctx, 1));
  const PerplexityResult r = evaluate_perplexity(model, s.tokens, o);
  return {name, s.source, r.tokens_scored, r.perplexity()};
}

void write_outputs(ExportedItem& item, const FormatSpec& spec, AdaptedModel& am,
                   const ExportRequest& req) {
  LlamaModel& model = *am.base.model;
  const LoraModel& lora = *am.lora;
  if (spec.kind == "peft") {
    PeftExportOptions o;
    o.base_model_name_or_path = req.base_model_name;
    o.replace_existing = req.force;
    item.notes = export_peft_adapter(item.path, lora, model, am.base_path, o).notes;
  } else if (spec.kind == "merged-safetensors") {
    HfExportOptions o;
    o.dtype = parse_merge_dtype(spec.type);
    o.replace_existing = req.force;
    item.notes = export_hf_model(model, &lora, am.base_path, item.path, o).notes;
  } else if (spec.kind == "gguf-adapter") {
    GgufAdapterOptions o;
    o.type = parse_gguf_adapter_type(spec.type);
    o.base_model = am.base_path;
    item.notes = export_gguf_adapter(model, lora, item.path, o).notes;
  } else {
    MergedGgufOptions o;
    o.type = parse_merged_gguf_type(spec.type);
    item.notes = export_merged_gguf(model, &lora, am.base_path, item.path, o).notes;
  }
}

}  // namespace

void check_export_formats(const std::vector<std::string>& formats) {
  const auto& known = known_export_formats();
  for (size_t i = 0; i < formats.size(); ++i) {
    const std::string& f = formats[i];
    if (std::find(known.begin(), known.end(), f) == known.end())
      throw Error(fmt::format("export format '{}' is not known; the formats are: {}", f,
                              recipe_detail::join(known)));
    if (std::find(formats.begin(), formats.begin() + static_cast<std::ptrdiff_t>(i), f) !=
        formats.begin() + static_cast<std::ptrdiff_t>(i))
      throw Error(fmt::format("export format '{}' is given twice", f));
  }
}

namespace {

ExportSummary export_adapter_unguarded(AdaptedModel& am, const ExportRequest& req,
                                       const std::function<void(const std::string&)>& log,
                                       std::vector<std::string>& written) {
  check_export_formats(req.formats);
  LOOM_CHECK(!req.out_dir.empty(), "export: no output folder given");
  if (am.lora->merged()) am.lora->unmerge();
  am.lora->set_training(false);
  ExportSummary summary;
  // Refuse every existing output before writing any.
  std::vector<FormatSpec> specs;
  for (const std::string& f : req.formats) {
    specs.push_back(parse_format(f));
    const std::string path = (fs::path(req.out_dir) / specs.back().output).string();
    if (fs::exists(path) && !req.force)
      throw Error(fmt::format("{} exists: remove it, or pass --force to replace it", path));
  }
  for (const FormatSpec& spec : specs)
    if (spec.kind == "gguf-adapter" && am.lora->head_module() != nullptr &&
        am.base.model->config().tie_word_embeddings)
      throw Error(fmt::format("export: {} cannot hold this adapter: {}", spec.output,
                              gguf_tied_head_adapter_reason()));
  // The text the cost is measured on, read (and checked) before anything is written.
  std::vector<HeldoutTokens> streams;
  if (req.evaluate && !req.eval_text.empty()) {
    streams = text_stream(am, req.eval_text, req.eval_tokens);
    summary.cost_note = fmt::format("on {} (first {} tokens)", req.eval_text, req.eval_tokens);
  } else if (req.evaluate && !am.run_dir.empty()) {
    streams = heldout_streams(am, req.eval_tokens);
    summary.cost_note = fmt::format(
        "on the run's held-out documents (at most {} tokens per source)", req.eval_tokens);
  } else if (req.evaluate) {
    summary.cost_note =
        "not measured: no held-out data (the adapter is not a loom run); pass "
        "--eval-text FILE";
  }
  // Folders this call creates are removed again when an export fails and leaves them empty
  // (each export is staged and renamed into place, so nothing partial is ever in them).
  // `created`: the outermost folder of out_dir that does not exist yet (empty when none).
  fs::path created;
  std::error_code dir_error;
  for (fs::path p = fs::path(req.out_dir).lexically_normal(); !p.empty() && p != p.root_path();
       p = p.parent_path()) {
    if (fs::exists(p, dir_error) || dir_error) break;
    created = p;
    if (!p.has_parent_path()) break;
  }
  fs::create_directories(req.out_dir, dir_error);
  if (dir_error || !fs::is_directory(req.out_dir))
    throw Error(fmt::format("export: cannot create the output folder {}: {}", req.out_dir,
                            dir_error ? dir_error.message() : "a file of that name is in the way"));
  for (size_t i = 0; i < specs.size(); ++i) {
    ExportedItem item;
    item.format = req.formats[i];
    item.path = (fs::path(req.out_dir) / specs[i].output).string();
    log(fmt::format("export {} -> {}", item.format, item.path));
    try {
      write_outputs(item, specs[i], am, req);
    } catch (...) {
      // Empty folders this call made, from out_dir up to the outermost one it created.
      std::error_code ec;
      if (!created.empty())
        for (fs::path p = fs::path(req.out_dir).lexically_normal(); !p.empty();
             p = p.parent_path()) {
          if (!fs::is_empty(p, ec) || ec || !fs::remove(p, ec)) break;
          if (p == created) break;
        }
      throw;
    }
    item.bytes = size_of(item.path);
    written.push_back(item.format);
    for (const std::string& n : item.notes) log("  note: " + n);
    log(fmt::format("  wrote {:.1f} MB", static_cast<double>(item.bytes) / 1048576.0));
    summary.items.push_back(std::move(item));
  }
  if (!req.evaluate) return summary;
  if (streams.empty()) {
    log("quantization cost " + summary.cost_note);
    return summary;
  }
  std::vector<const ExportedItem*> lossy;
  for (const ExportedItem& item : summary.items)
    if (item.format.rfind("merged-", 0) == 0 || item.format == "gguf-adapter-q8_0" ||
        item.format == "gguf-adapter-f16")
      lossy.push_back(&item);
  if (lossy.empty()) {
    summary.cost_note = "not measured: no merged or quantized export was asked for";
    return summary;
  }
  log(fmt::format("quantization cost {}: evaluating the adapter model and {} export(s)",
                  summary.cost_note, lossy.size()));
  for (const HeldoutTokens& s : streams)
    summary.cost.push_back(evaluate(*am.base.model, s, "adapter (unmerged)", req.precision));
  for (const ExportedItem* item : lossy) {
    if (item->format.rfind("gguf-adapter", 0) == 0) {
      // What llama.cpp applies: the adapter file on the base file as it is.
      TrainingModel base = load_training_model(am.base_path);
      LoraModel l = load_gguf_adapter(item->path, *base.model);
      l.set_training(false);
      for (const HeldoutTokens& s : streams)
        summary.cost.push_back(evaluate(*base.model, s, item->format + " on the base", req.precision));
    } else {
      const LlamaModel merged = LlamaModel::load(item->path);
      for (const HeldoutTokens& s : streams)
        summary.cost.push_back(evaluate(merged, s, item->format, req.precision));
    }
    log(fmt::format("  {} evaluated", item->format));
  }
  const std::string md = fmt::format("Quantization cost {}.\n\n{}", summary.cost_note,
                                     cost_table_markdown(summary.cost));
  nlohmann::json j = nlohmann::json::array();
  for (const CostRow& r : summary.cost)
    j.push_back({{"model", r.model}, {"source", r.source}, {"tokens", r.tokens}, {"perplexity", r.perplexity}});
  summary.cost_table_path = (fs::path(req.out_dir) / "quantization_cost.md").string();
  write_file_atomic(summary.cost_table_path, md);
  write_file_atomic((fs::path(req.out_dir) / "quantization_cost.json").string(), j.dump(2) + "\n");
  return summary;
}

}  // namespace

ExportSummary export_adapter(AdaptedModel& am, const ExportRequest& req,
                             const std::function<void(const std::string&)>& log) {
  // Ctrl-C / SIGTERM: the write or evaluation in progress throws, its temporary file or staging
  // folder is removed on the way out, and the message says what is complete.
  const InterruptGuard interrupt(InterruptMode::Cancel);
  std::vector<std::string> written;
  try {
    return export_adapter_unguarded(am, req, log, written);
  } catch (const Interrupted& e) {
    std::vector<std::string> missing;
    for (const std::string& f : req.formats)
      if (std::find(written.begin(), written.end(), f) == written.end()) missing.push_back(f);
    std::string what = fmt::format("{}: the export stopped, nothing half-written is left in {}",
                                   e.what(), req.out_dir);
    if (!written.empty()) what += fmt::format("; complete: {}", recipe_detail::join(written));
    if (!missing.empty())
      what += fmt::format("; not written: {}", recipe_detail::join(missing));
    else if (req.evaluate)
      what += "; the quantization cost table was not written";
    throw Interrupted(e.signal(), what);
  }
}

std::string cost_table_markdown(const std::vector<CostRow>& rows) {
  std::vector<std::string> sources, models;
  std::map<std::pair<std::string, std::string>, const CostRow*> at;
  for (const CostRow& r : rows) {
    if (std::find(sources.begin(), sources.end(), r.source) == sources.end()) sources.push_back(r.source);
    if (std::find(models.begin(), models.end(), r.model) == models.end()) models.push_back(r.model);
    at[{r.model, r.source}] = &r;
  }
  std::ostringstream out;
  out << "| model |";
  for (const std::string& s : sources) out << " " << s << " ppl | vs adapter |";
  out << "\n|---|";
  for (size_t i = 0; i < sources.size(); ++i) out << "---:|---:|";
  out << "\n";
  for (const std::string& m : models) {
    out << "| " << m << " |";
    for (const std::string& s : sources) {
      auto it = at.find({m, s});
      auto ref = at.find({models.front(), s});
      if (it == at.end()) {
        out << " - | - |";
        continue;
      }
      out << fmt::format(" {:.4f} |", it->second->perplexity);
      if (m == models.front() || ref == at.end()) out << " - |";
      else
        out << fmt::format(" {:+.2f}% |", 100.0 * (it->second->perplexity / ref->second->perplexity - 1.0));
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace loom
