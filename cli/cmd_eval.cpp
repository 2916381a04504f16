// `loom eval`: perplexity of a model on a text file, in non-overlapping windows of --ctx tokens
// (layers/inference.h says exactly which predictions count under each --scoring).
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

void run_eval(const EvalArgs& args) {
  EvalArgs a = args;
  if (a.ctx < 0) throw Error(fmt::format("--ctx must be positive, got {}", a.ctx));
  PerplexityOptions opt;
  opt.batch = a.batch;
  opt.max_windows = a.max_windows;
  opt.scoring = parse_perplexity_scoring(a.scoring);
  opt.precision = parse_precision_option(a.precision);
  if (a.max_windows < 0) throw Error(fmt::format("--max-windows must be >= 0, got {}", a.max_windows));

  const std::string text = read_text_file(a.text);
  if (a.model.empty() && a.adapter.empty()) throw Error("give --model, --adapter or both");
  // With --adapter: the adapter on its base (--model overrides the base it names).
  LoadedModel lm;
  AdaptedModel am;
  if (a.adapter.empty()) lm = load_model_and_tokenizer(a.model);
  else am = load_adapted_model(a.adapter, a.model);
  const LlamaModel& model = a.adapter.empty() ? *lm.model : *am.base.model;
  const Tokenizer& tok = a.adapter.empty() ? *lm.tokenizer : *am.base.tokenizer;
  const std::string model_name = a.adapter.empty() ? a.model : am.base_path;
  const ModelConfig& c = model.config();
  if (a.ctx == 0)
    a.ctx = c.max_position_embeddings > 0 ? std::min<int64_t>(512, c.max_position_embeddings) : 512;
  if (c.max_position_embeddings > 0 && a.ctx > c.max_position_embeddings)
    throw Error(fmt::format("--ctx {} exceeds the model's {} positions", a.ctx,
                            c.max_position_embeddings));
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
    fmt::print("  adapter:  {} ({}): {}\n", a.adapter, am.kind, am.lora->config().summary());
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
  CLI::App* cmd = app.add_subcommand("eval", "Perplexity of a model on a text file");
  cmd->add_option("--model", args->model,
                  "GGUF file or Hugging Face model folder (with --adapter: the base, if not the "
                  "one the adapter names)");
  cmd->add_option("--adapter", args->adapter,
                  "Evaluate with an adapter: a loom run directory or adapter folder, a PEFT "
                  "adapter folder or a llama.cpp LoRA adapter .gguf");
  cmd->add_option("--text", args->text, "UTF-8 text file")->required();
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
