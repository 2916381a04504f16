// `loom eval`: perplexity of a model on a text file, in non-overlapping windows of --ctx tokens
// (layers/inference.h says exactly which predictions count under each --scoring); or, with
// --data, the loss on a data source's trained tokens (the completions of instruct data, the
// assistant turns of chat data), read as training reads it, each document scored whole in a row
// of its own.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "autograd/check.h"
#include "cli/commands.h"
#include "data/token_cache.h"
#include "data/tokenize.h"
#include "layers/inference.h"
#include "trainer/adapter_load.h"

namespace loom::cli {

namespace {

struct EvalArgs {
  std::string model;
  std::string adapter;
  std::string text;
  int64_t ctx = 0;  // 0: 512, or the model's context when that is shorter
  int64_t batch = 1;
  int64_t max_windows = 0;
  std::string scoring = "second-half";
  std::string precision = "auto";
  // --data: a data source, as a recipe's data.sources entry describes one
  std::string data;
  TrainSourcePlan source;
  int64_t max_batches = 0;
};

std::string read_text_file(const std::string& path) {
  if (std::filesystem::is_directory(path))
    throw Error(fmt::format("--text {}: is a folder; give one UTF-8 text file", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("--text {}: cannot open the file", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string::npos)
    throw Error(fmt::format("--text {}: not valid UTF-8 at byte {}; convert the file to UTF-8 "
                            "(e.g. iconv -f latin1 -t utf-8)",
                            path, bad));
  return text;
}

// The model (with the adapter) that --model / --adapter name.
struct EvalModel {
  LoadedModel plain;
  AdaptedModel adapted;
  const LlamaModel* model = nullptr;
  const Tokenizer* tokenizer = nullptr;
  std::string name;
};
void load_eval_model(const EvalArgs& a, EvalModel& m) {
  if (a.model.empty() && a.adapter.empty()) throw Error("give --model, --adapter or both");
  if (a.adapter.empty()) {
    m.plain = load_model_and_tokenizer(a.model);
    m.model = m.plain.model.get();
    m.tokenizer = m.plain.tokenizer.get();
    m.name = a.model;
  } else {
    m.adapted = load_adapted_model(a.adapter, a.model);
    m.model = m.adapted.base.model.get();
    m.tokenizer = m.adapted.base.tokenizer.get();
    m.name = m.adapted.base_path;
  }
}

int64_t default_ctx(const EvalArgs& a, const ModelConfig& c) {
  if (a.ctx < 0) throw Error(fmt::format("--ctx must be positive, got {}", a.ctx));
  if (c.max_position_embeddings > 0 && a.ctx > c.max_position_embeddings)
    throw Error(
        fmt::format("--ctx {} exceeds the model's {} positions", a.ctx, c.max_position_embeddings));
  if (a.ctx > 0) return a.ctx;
  return c.max_position_embeddings > 0 ? std::min<int64_t>(512, c.max_position_embeddings) : 512;
}

// --data: mean loss on the trained tokens of every document of the source.
void run_eval_data(const EvalArgs& a) {
  if (a.batch < 1) throw Error(fmt::format("--batch must be at least 1, got {}", a.batch));
  if (a.max_batches < 0)
    throw Error(fmt::format("--max-batches must be >= 0, got {}", a.max_batches));
  const Precision precision = parse_precision_option(a.precision);
  EvalModel m;
  load_eval_model(a, m);
  const ModelConfig& c = m.model->config();
  TrainSourcePlan sp = a.source;
  sp.name = "eval";
  sp.path = a.data;
  sp.heldout_fraction = 0;
  const SourceConfig sc = source_config(sp, *m.tokenizer);
  PackingConfig packing;
  packing.seq_len = default_ctx(a, c);
  packing.batch_size = a.batch;
  // One document per row: a document is scored whole, from its own start, however the others
  // fall (packed rows would cut documents at row boundaries).
  packing.one_document_per_row = true;
  packing.pad_id = m.tokenizer->pad_id();
  packing.framing = document_framing(*m.tokenizer);

  fmt::print("loom eval\n");
  fmt::print("  model:    {} ({}, {} layers, hidden {}, vocab {})\n", m.name, c.architecture,
             c.n_layers, c.hidden_size, c.vocab_size);
  if (!a.adapter.empty())
    fmt::print("  adapter:  {} ({}): {}\n", a.adapter, m.adapted.kind,
               m.adapted.lora->config().summary());
  fmt::print("  weights:  {}\n", describe_dtype_mix(*m.model));
  fmt::print("  compute:  {}\n", precision_label(precision));
  const bool chat = renders_chat(sp);
  fmt::print("  data:     {} (format {}{})\n", a.data, sp.format,
             chat
                 ? fmt::format(", rendered as {}, conversations without a system message get {}",
                               sc.chat_template,
                               sc.default_system.empty() ? std::string("none")
                                                         : fmt::format("\"{}\"", sc.default_system))
                 : "");
  std::fflush(stdout);
  TokenCacheReport report;
  const auto src = load_tokenized_source(sc, *m.tokenizer, tokenizer_fingerprint(*m.tokenizer),
                                         TokenCacheOptions{}, &report);
  std::vector<int64_t> docs(static_cast<size_t>(src->num_documents()));
  for (size_t i = 0; i < docs.size(); ++i) docs[i] = static_cast<int64_t>(i);
  int64_t longest = 0;
  for (int64_t d : docs) longest = std::max(longest, framed_length(*src, d, packing.framing));
  fmt::print("            {} documents, {} tokens ({} token cache {}){}\n", src->num_documents(),
             src->num_tokens(), report.hit ? "from" : "built", report.path,
             src->skipped_records() > 0
                 ? fmt::format("; {} bad records skipped", src->skipped_records())
                 : "");
  fmt::print(
      "  scoring:  {}: one document per row of {} tokens (padded), {} row{} per "
      "forward{}\n",
      chat                      ? "the assistant turns' tokens and their turn ends"
      : sp.format == "instruct" ? "the completions' tokens and the EOS after them"
                                : "every token and each document's EOS",
      packing.seq_len, a.batch, a.batch == 1 ? "" : "s",
      longest > packing.seq_len + 1  // a row holds seq_len + 1 tokens (inputs and targets)
          ? fmt::format("; documents longer than a row ({} tokens at most here) go on in "
                        "the next row without the earlier context: raise --ctx to keep "
                        "them whole",
                        longest)
          : "");
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  const auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const SourceEval e = evaluate_documents(
      *m.model, src, docs, packing, precision, a.max_batches,
      [&](const SourceEval& now, int64_t batches) {
        if (batches % 10 != 0) return;
        fmt::print("  [{} batches] loss {:.5f}, perplexity {:.4f}, {} targets, {:.1f} s\n", batches,
                   now.loss, now.perplexity, now.tokens, seconds());
        std::fflush(stdout);
      });
  if (e.tokens == 0)
    throw Error(fmt::format("--data {}: no token to score (no trained segment in {} documents)",
                            a.data, src->num_documents()));
  fmt::print("loss:       {:.5f} nats per target token, perplexity {:.4f} ({} targets{})\n", e.loss,
             e.perplexity, e.tokens,
             a.max_batches > 0 ? fmt::format(", the first {} batches", a.max_batches) : "");
  fmt::print("time:       {:.2f} s\n", seconds());
  if (!std::isfinite(e.loss))
    throw Error(
        fmt::format("the loss is not finite ({}): the model{} gives non-finite logits; "
                    "its weights may hold a NaN or Inf",
                    e.loss, a.adapter.empty() ? "" : " with the adapter"));
}

void run_eval(const EvalArgs& args) {
  if (!args.data.empty() && !args.text.empty())
    throw Error(
        "give --text (perplexity of a text file) or --data (loss on a data source), not both");
  if (args.data.empty() && args.text.empty())
    throw Error(
        "give --text FILE (perplexity of a text file) or --data FILE (loss on a data "
        "source's trained tokens)");
  if (!args.data.empty()) return run_eval_data(args);
  EvalArgs a = args;
  PerplexityOptions opt;
  opt.batch = a.batch;
  opt.max_windows = a.max_windows;
  opt.scoring = parse_perplexity_scoring(a.scoring);
  opt.precision = parse_precision_option(a.precision);
  if (a.max_windows < 0) throw Error(fmt::format("--max-windows must be >= 0, got {}", a.max_windows));

  const std::string text = read_text_file(a.text);
  // With --adapter: the adapter on its base (--model overrides the base it names).
  EvalModel m;
  load_eval_model(a, m);
  const LlamaModel& model = *m.model;
  const Tokenizer& tok = *m.tokenizer;
  const std::string& model_name = m.name;
  const ModelConfig& c = model.config();
  a.ctx = default_ctx(a, c);
  opt.ctx = a.ctx;
  // As llama.cpp's perplexity tool: BOS in front when the model asks for it, and then every
  // window starts with BOS in place of its first text token.
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> tokens = tok.encode(text, /*add_special=*/true, /*parse_special=*/false);
  const double tokenize_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (tok.add_bos() && tok.bos_id() >= 0) opt.first_token_override = tok.bos_id();

  const int64_t n_tokens = static_cast<int64_t>(tokens.size());
  const int64_t windows = perplexity_windows(n_tokens, opt);
  if (windows == 0)
    throw Error(fmt::format("--text {}: {} tokens, fewer than one window of --ctx {}; use a "
                            "longer text or a smaller --ctx",
                            a.text, n_tokens, a.ctx));
  const int64_t per_window = scored_per_window(opt);
  const int64_t first = a.ctx - 1 - per_window;

  fmt::print("loom eval\n");
  fmt::print("  model:    {} ({}, {} layers, hidden {}, vocab {})\n", model_name, c.architecture,
             c.n_layers, c.hidden_size, c.vocab_size);
  if (!a.adapter.empty())
    fmt::print("  adapter:  {} ({}): {}\n", a.adapter, m.adapted.kind,
               m.adapted.lora->config().summary());
  fmt::print("  weights:  {}\n", describe_dtype_mix(model));
  fmt::print("  compute:  {}\n", precision_label(opt.precision));
  fmt::print("  text:     {} ({} bytes, {} tokens, tokenized in {:.3f} s{})\n", a.text, text.size(),
             n_tokens, tokenize_s, tok.add_bos() ? ", BOS first" : "");
  fmt::print("  windows:  {} of {} tokens, non-overlapping, each from an empty context ({} tokens "
             "run, {} not evaluated), {} window{} per forward\n",
             windows, a.ctx, windows * a.ctx, n_tokens - windows * a.ctx, a.batch,
             a.batch == 1 ? "" : "s");
  fmt::print("  scoring:  {}: the predictions made at positions {}..{} of each window ({} per "
             "window, {} in all){}\n",
             a.scoring, first, a.ctx - 2, per_window, per_window * windows,
             opt.scoring == PerplexityScoring::SecondHalf
                 ? "; as llama.cpp's perplexity tool, so the numbers compare"
                 : "; not comparable with llama.cpp's perplexity tool (use --scoring second-half)");
  std::fflush(stdout);

  const PerplexityResult r = evaluate_perplexity(model, tokens, opt, [&](const PerplexityResult& p) {
    fmt::print("  [{}/{}] perplexity {:.4f}, {:.1f} tokens/s\n", p.windows, windows,
               p.perplexity(), p.tokens_per_second());
    std::fflush(stdout);
  });
  fmt::print("perplexity: {:.4f} ({} predictions, mean negative log-likelihood {:.5f} nats)\n",
             r.perplexity(), r.tokens_scored, r.nll_sum / static_cast<double>(r.tokens_scored));
  fmt::print("tokens:     {} run in {:.2f} s: {:.1f} tokens/s\n", r.tokens_evaluated, r.seconds,
             r.tokens_per_second());
  if (!std::isfinite(r.nll_sum))
    throw Error(
        fmt::format("the perplexity is not finite ({}): the model{} gives non-finite "
                    "logits; its weights may hold a NaN or Inf",
                    r.perplexity(), a.adapter.empty() ? "" : " with the adapter"));
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Perplexity of a model on a text file, or its loss on a data source's trained tokens");
  cmd->add_option("--model", args->model,
                  "GGUF file or Hugging Face model folder (with --adapter: the base, if not the "
                  "one the adapter names)");
  cmd->add_option("--adapter", args->adapter,
                  "Evaluate with an adapter: a loom run directory or adapter folder, a PEFT "
                  "adapter folder or a llama.cpp LoRA adapter .gguf");
  cmd->add_option("--text", args->text, "UTF-8 text file: its perplexity");
  cmd->add_option("--data", args->data,
                  "A data source (file or glob, as a recipe's data.sources path): the mean loss "
                  "on its trained tokens (completions, assistant turns), read as --format says");
  TrainSourcePlan& s = args->source;
  s.format = "text";
  cmd->add_option("--format", s.format, "--data: text, jsonl, instruct, chat or dictd")
      ->capture_default_str();
  cmd->add_option("--text-field", s.text_field, "--data jsonl: the text field")
      ->capture_default_str();
  cmd->add_option("--prompt-field", s.prompt_field, "--data instruct: the prompt field")
      ->capture_default_str();
  cmd->add_option("--completion-field", s.completion_field,
                  "--data instruct: the completion field (scored)")
      ->capture_default_str();
  cmd->add_flag("--instruct-as-chat", s.instruct_as_chat,
                "--data instruct: render as a user / assistant exchange with --chat-template");
  cmd->add_option("--messages-field", s.messages_field,
                  "--data chat: the field holding the messages (ShareGPT files: conversations)")
      ->capture_default_str();
  cmd->add_option("--chat-template", s.chat_template,
                  "--data chat: model (the model's own format), chatml, llama3, mistral-v1, "
                  "mistral-v3 or llama2")
      ->capture_default_str();
  cmd->add_option("--default-system", s.default_system,
                  "--data chat: system message of conversations without one: model (the model "
                  "template's own), none, or the text")
      ->capture_default_str();
  cmd->add_option("--separator", s.separator,
                  "--data text: \"\" = blank-line separated documents, file = one per file, else "
                  "that separator");
  cmd->add_flag("--skip-bad-records", s.skip_bad_records,
                "--data: leave unreadable records out (with a warning) instead of failing");
  cmd->add_option("--max-batches", args->max_batches,
                  "--data: score at most this many batches; 0 = all")
      ->capture_default_str();
  cmd->add_option("--ctx", args->ctx,
                  "Tokens per window (default 512, or the model's context if that is shorter)");
  cmd->add_option("--batch", args->batch, "Windows per forward")->capture_default_str();
  cmd->add_option("--scoring", args->scoring,
                  "second-half (llama.cpp's perplexity tool: the last ctx/2 - 1 predictions of "
                  "each window) or all (every prediction)")
      ->capture_default_str();
  cmd->add_option("--max-windows", args->max_windows, "Evaluate at most this many windows; 0 = all")
      ->capture_default_str();
  cmd->add_option("--precision", args->precision, "Matrix products: f32, bf16 or auto")
      ->capture_default_str();
  cmd->callback([args] { run_reporting_errors([&] { run_eval(*args); }); });
}

}  // namespace loom::cli
