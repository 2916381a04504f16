// `loom generate`: a prompt in, a continuation streamed out, through the KV-cache decoder
// (layers/inference.h) and the sampler (layers/sampling.h).
//
// The generated text goes to stdout as it is made; what the run will do, and the tokens/s of the
// prefill and of the decode, go to stderr, so `loom generate ... > out.txt` keeps only the text.
#include <fmt/format.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "autograd/check.h"
#include "cli/commands.h"
#include "layers/inference.h"
#include "layers/sampling.h"
#include "trainer/adapter_load.h"

namespace loom::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string adapter;
  std::string prompt;
  int64_t max_tokens = 256;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  uint64_t seed = 0;
  bool chat = false;
  std::optional<std::string> system;  // --system "" : no system message
  int64_t ctx = 0;
  std::string precision = "f32";
};

// Bytes of `s` up to the end of its last complete UTF-8 character: a token may end in the middle
// of one, and its rest comes with the next token.
size_t complete_utf8_prefix(const std::string& s) {
  size_t i = s.size();
  size_t back = 0;
  while (i > 0 && back < 4) {
    const unsigned char c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) != 0x80) {  // a lead byte (or ASCII): is its sequence whole?
      const size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
      return back + 1 >= need ? s.size() : i - 1;
    }
    --i;
    ++back;
  }
  return s.size();
}

std::string token_list(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) out += fmt::format("{}{} ({})", out.empty() ? "" : ", ", tok.token_text(id), id);
  return out.empty() ? "none" : out;
}

void run_generate(const GenerateArgs& a) {
  SamplingParams sampling;
  sampling.temperature = a.temperature;
  sampling.top_p = a.top_p;
  sampling.top_k = a.top_k;
  sampling.seed = a.seed;
  sampling.validate();
  if (a.max_tokens < 1) throw Error(fmt::format("--max-tokens must be >= 1, got {}", a.max_tokens));
  if (a.system && !a.chat) throw Error("--system needs --chat");
  const Precision precision = parse_precision_option(a.precision);

  if (a.model.empty() && a.adapter.empty()) throw Error("give --model, --adapter or both");
  // With --adapter: the adapter on its base (--model overrides the base it names); the decoder
  // runs the adapted projections unmerged.
  LoadedModel lm;
  AdaptedModel am;
  if (a.adapter.empty()) lm = load_model_and_tokenizer(a.model);
  else am = load_adapted_model(a.adapter, a.model);
  const LlamaModel& model = a.adapter.empty() ? *lm.model : *am.base.model;
  const Tokenizer& tok = a.adapter.empty() ? *lm.tokenizer : *am.base.tokenizer;
  const ModelConfig& c = model.config();

  std::vector<int32_t> prompt;
  std::string prompt_kind = "raw text (special tokens written in it are parsed)";
  if (a.chat) {
    std::vector<ChatMessage> messages;
    if (a.system && !a.system->empty()) messages.push_back({"system", *a.system});
    messages.push_back({"user", a.prompt});
    // Tokenized piece by piece as training tokenizes a conversation: the user's text is text.
    prompt = encode_chat_pieces(
        tok, chat_prompt_pieces(tok.chat_template(), tok.find_token("[INST]") >= 0, messages,
                                /*default_system=*/!a.system));
    const ChatTemplate* format = detect_chat_template(tok);
    const std::string default_system = template_default_system(tok.chat_template());
    prompt_kind = fmt::format(
        "{} chat turn ({})", format ? format->name : "?",
        a.system ? (a.system->empty() ? std::string("no system message (--system \"\")")
                                      : std::string("--system message"))
        : default_system.empty()
            ? std::string("no system message: the template has no default one")
            : fmt::format("the template's default system message \"{}\"", default_system));
  } else {
    prompt = tok.encode(a.prompt, /*add_special=*/true, /*parse_special=*/true);
  }
  if (prompt.empty()) throw Error("--prompt gives no tokens; write some text");

  DecoderOptions dopt;
  dopt.precision = precision;
  const int64_t wanted = static_cast<int64_t>(prompt.size()) + a.max_tokens;
  const int64_t model_max = c.max_position_embeddings > 0 ? c.max_position_embeddings : wanted;
  if (a.ctx < 0)
    throw Error(fmt::format("--ctx must be 0 (prompt + --max-tokens) or more, got {}", a.ctx));
  if (c.max_position_embeddings > 0 && a.ctx > c.max_position_embeddings)
    throw Error(fmt::format("--ctx {} is more than the model's context length {}", a.ctx,
                            c.max_position_embeddings));
  dopt.context_size = a.ctx > 0 ? a.ctx : std::min(wanted, model_max);
  if (static_cast<int64_t>(prompt.size()) >= dopt.context_size)
    throw Error(fmt::format("the prompt has {} tokens, which leaves no room in a context of {} "
                            "positions; raise --ctx or shorten --prompt",
                            prompt.size(), dopt.context_size));
  KvCacheDecoder decoder(model, dopt);
  GenerationOptions gopt;
  gopt.max_tokens = a.max_tokens;
  gopt.sampling = sampling;
  gopt.stop_ids = stop_token_ids(tok);

  fmt::print(stderr, "loom generate\n");
  fmt::print(stderr, "  model:      {} ({}, {} layers, hidden {}, {} heads / {} kv heads, vocab {})\n",
             a.adapter.empty() ? a.model : am.base_path, c.architecture, c.n_layers,
             c.hidden_size, c.n_heads, c.n_kv_heads, c.vocab_size);
  if (!a.adapter.empty())
    fmt::print(stderr, "  adapter:    {} ({}): {}\n", a.adapter, am.kind,
               am.lora->config().summary());
  fmt::print(stderr, "  weights:    {}\n", describe_dtype_mix(model));
  fmt::print(stderr, "  compute:    {}, KV cache f32\n", precision_label(precision));
  fmt::print(stderr, "  prompt:     {} tokens, {}\n", prompt.size(), prompt_kind);
  fmt::print(stderr, "  sampling:   {}\n", sampling.describe());
  fmt::print(stderr, "  generate:   at most {} tokens; context {} positions (KV cache up to {:.1f} MB); "
             "stop at {}\n",
             a.max_tokens, decoder.context_size(),
             static_cast<double>(decoder.cache_bytes()) / (1 << 20), token_list(tok, gopt.stop_ids));
  fmt::print(stderr, "---\n");
  std::fflush(stderr);

  std::vector<int32_t> generated;
  size_t printed = 0;
  auto flush_text = [&](bool final) {
    const std::string full = tok.decode(generated, /*render_special=*/true);
    const size_t end = final ? full.size() : complete_utf8_prefix(full);
    if (end > printed) {
      std::fwrite(full.data() + printed, 1, end - printed, stdout);
      std::fflush(stdout);
      printed = end;
    }
  };
  const GenerationStats stats = generate(decoder, prompt, gopt, [&](int32_t id) {
    generated.push_back(id);
    flush_text(false);
    return true;
  });
  flush_text(true);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const char* why = stats.stopped_by_token     ? "a stop token"
                    : stats.stopped_by_context ? "the full context"
                                               : "--max-tokens";
  fmt::print(stderr, "---\n");
  fmt::print(stderr,
             "prefill: {} tokens in {:.3f} s ({:.1f} tokens/s); decode: {} tokens in {:.3f} s "
             "({:.1f} tokens/s); {} tokens generated, ended by {}\n",
             stats.prompt_tokens, stats.prefill_seconds, stats.prefill_tokens_per_second(),
             stats.decode_steps, stats.decode_seconds, stats.decode_tokens_per_second(),
             stats.generated_tokens, why);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Continue a prompt with a model (KV cache; greedy unless --temperature > 0)");
  cmd->add_option("--model", args->model,
                  "GGUF file or Hugging Face model folder (with --adapter: the base, if not the "
                  "one the adapter names)");
  cmd->add_option("--adapter", args->adapter,
                  "Generate with an adapter: a loom run directory or adapter folder, a PEFT "
                  "adapter folder or a llama.cpp LoRA adapter .gguf");
  cmd->add_option("--prompt", args->prompt, "Text to continue (with --chat: the user's message)")
      ->required();
  cmd->add_option("--max-tokens", args->max_tokens, "Tokens to generate at most")
      ->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling mass; 1 = off")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "Keep the k most likely tokens; 0 = off")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Random seed of the sampler (0 or more)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](const std::string& value) {
            return value.rfind('-', 0) == 0 ? fmt::format("must be 0 or more, got {}", value)
                                            : std::string();
          },
          "SEED >= 0"));
  cmd->add_flag("--chat", args->chat,
                "Wrap the prompt in the model's chat template (ChatML, Llama 3's, Mistral's or "
                "Llama 2's format, recognized in the template)");
  cmd->add_option("--system", args->system,
                  "System message for --chat (default: the template's own default one, if any; "
                  "--system \"\" for none)");
  cmd->add_option("--ctx", args->ctx, "KV cache positions; 0 = prompt + --max-tokens")
      ->capture_default_str();
  cmd->add_option("--precision", args->precision, "Matrix products: f32, bf16 or auto")
      ->capture_default_str();
  cmd->callback([args] { run_reporting_errors([&] { run_generate(*args); }); });
}

}  // namespace loom::cli
