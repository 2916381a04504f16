// Windowed perplexity and ChatML prompts (layers/inference.h).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "autograd/check.h"
#include "autograd/interrupt.h"
#include "autograd/tape.h"
#include "layers/inference.h"

namespace loom {

// ---- perplexity -------------------------------------------------------------------------------

std::string_view perplexity_scoring_name(PerplexityScoring s) {
  return s == PerplexityScoring::SecondHalf ? "second-half" : "all";
}

PerplexityScoring parse_perplexity_scoring(std::string_view name) {
  if (name == "second-half") return PerplexityScoring::SecondHalf;
  if (name == "all") return PerplexityScoring::All;
  throw Error(fmt::format("eval: --scoring '{}' is not known; expected 'second-half' (llama.cpp's "
                          "perplexity tool) or 'all'",
                          name));
}

double PerplexityResult::perplexity() const {
  return tokens_scored > 0 ? std::exp(nll_sum / static_cast<double>(tokens_scored))
                           : std::numeric_limits<double>::quiet_NaN();
}

double PerplexityResult::tokens_per_second() const {
  return seconds > 0 ? static_cast<double>(tokens_evaluated) / seconds : 0.0;
}

namespace {

void check_options(const PerplexityOptions& o) {
  if (o.ctx < 2) throw Error(fmt::format("eval: --ctx must be at least 2 tokens, got {}", o.ctx));
  if (o.batch < 1) throw Error(fmt::format("eval: --batch must be at least 1, got {}", o.batch));
  if (o.scoring == PerplexityScoring::SecondHalf && o.ctx - 1 - o.ctx / 2 < 1)
    throw Error(
        fmt::format("eval: --ctx {} scores no token (the second half of each window is "
                    "scored, each position predicting the next); use --ctx 3 or more",
                    o.ctx));
  LOOM_CHECK(o.max_windows >= 0, "eval: max_windows {} must be >= 0", o.max_windows);
}

// First position (within a window) whose prediction counts.
int64_t first_scored(const PerplexityOptions& o) {
  return o.scoring == PerplexityScoring::SecondHalf ? o.ctx / 2 : 0;
}

}  // namespace

int64_t perplexity_windows(int64_t n_tokens, const PerplexityOptions& options) {
  check_options(options);
  const int64_t whole = n_tokens / options.ctx;
  return options.max_windows > 0 ? std::min(whole, options.max_windows) : whole;
}

int64_t scored_per_window(const PerplexityOptions& options) {
  check_options(options);
  return options.ctx - 1 - first_scored(options);
}

PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options,
                                     const std::function<void(const PerplexityResult&)>& progress) {
  const int64_t ctx = options.ctx;
  const int64_t n_windows = perplexity_windows(static_cast<int64_t>(tokens.size()), options);
  if (n_windows == 0)
    throw Error(fmt::format("eval: the text has {} tokens, fewer than one window of --ctx {}",
                            tokens.size(), ctx));
  const int64_t first = first_scored(options);
  NoGradGuard no_grad;
  ForwardOptions fwd;
  fwd.checkpoint_blocks = false;
  fwd.precision = options.precision;
  PerplexityResult result;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t w0 = 0; w0 < n_windows; w0 += options.batch) {
    throw_if_interrupted();  // inside an export's Ctrl-C guard (autograd/interrupt.h)
    const int64_t nb = std::min(options.batch, n_windows - w0);
    std::vector<int32_t> ids(tokens.begin() + w0 * ctx, tokens.begin() + (w0 + nb) * ctx);
    if (options.first_token_override >= 0)
      for (int64_t b = 0; b < nb; ++b) ids[static_cast<size_t>(b * ctx)] = options.first_token_override;
    TokenBatch batch;
    batch.ids = ids;
    batch.batch = nb;
    batch.seq_len = ctx;
    const Tensor hidden = model.forward_hidden(batch, fwd);  // [nb, ctx, D]
    for (int64_t b = 0; b < nb; ++b) {
      // Position i predicts the text's token i+1 (never the overridden first token).
      std::vector<int32_t> targets(static_cast<size_t>(ctx), -100);
      for (int64_t i = first; i + 1 < ctx; ++i)
        targets[static_cast<size_t>(i)] = tokens[static_cast<size_t>((w0 + b) * ctx + i + 1)];
      const CrossEntropyResult ce =
          model.loss(slice(hidden, 0, b, 1), targets, -100, options.precision);
      result.window_nll.push_back(ce.loss_sum);
      result.nll_sum += ce.loss_sum;
      result.tokens_scored += ce.n_tokens;
    }
    result.windows += nb;
    result.tokens_evaluated += nb * ctx;
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (progress) progress(result);
  }
  return result;
}

// ---- chat prompts -----------------------------------------------------------------------------

std::vector<ChatPiece> chat_prompt_pieces(const std::string& chat_template, bool inst_is_token,
                                          const std::vector<ChatMessage>& messages,
                                          bool default_system) {
  if (chat_template.empty())
    throw Error("chat: the model has no chat template (tokenizer.chat_template); run without "
                "--chat and write the prompt in the model's own format");
  const ChatTemplate* format = detect_chat_template(chat_template, inst_is_token);
  if (format == nullptr)
    throw Error(
        fmt::format("chat: the model's chat template is none of the formats loom renders "
                    "({}); run without --chat and write the prompt in the model's own "
                    "format",
                    builtin_chat_template_list()));
  LOOM_CHECK(!messages.empty(), "chat: no messages to render");
  const std::string system = default_system ? template_default_system(chat_template) : "";
  return render_chat_pieces(*format, with_default_system(messages, system),
                            /*add_generation_prompt=*/true);
}

std::string render_chat_prompt(const std::string& chat_template,
                               const std::vector<ChatMessage>& messages, bool default_system,
                               bool inst_is_token) {
  std::string text;
  for (const ChatPiece& p :
       chat_prompt_pieces(chat_template, inst_is_token, messages, default_system))
    text += p.text;
  return text;
}

}  // namespace loom
